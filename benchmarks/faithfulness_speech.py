"""ERASER faithfulness for speech: which stretches of a spoken digit does the classifier's answer
depend on?

    python benchmarks/faithfulness_speech.py runs/speech [--n 300] [--draws 5]

The run is a `speech` run with the classifier head and the self-attention encoder
(configs/speech_digits.yaml). Units are the encoder's frames: the convolutional front end
halves time twice, so encoder frame i stands for the 4 log-mel frames 4i … 4i + 3 (40 ms).
Removing a unit deletes those log-mel frames from the input (ERASER deletes tokens; a deleted
stretch of audio is the same operation in time), and the clip is heard again from what is left.
The score is the probability of the class predicted on the whole clip. Rankings:

* attention — the last encoder layer's self-attention (mean over heads) received by each frame,
  averaged over the queries (the model mean-pools every frame's state, so every query counts);
* rollout — the encoder's attention rollout (Abnar & Zuidema 2020), averaged over the query rows
  the mean pooling reads: what share of the pooled state each input frame carries, if attention
  alone mixed the frames;
* gradient × attention — the last layer's self-attention times its gradient, summed over queries;
* input × gradient — the front end's output · its gradient per frame (the non-attention control).

Writes RUN/faithfulness.json, which `heedful report RUN` shows.
"""

from __future__ import annotations

import time

import torch

from common import faithfulness_args, report_faithfulness
from heedful.explain.capture import capture
from heedful.explain.faithfulness import faithfulness_table, ranking
from heedful.explain.rollout import attention_rollout, gradient_x_attention, input_x_gradient

FRAMES_PER_UNIT = 4  # two stride-2 convolutions in time


class Clip(list):
    """A clip's units (encoder frame indices), with its log-mel features (T, M) and its class."""

    features: torch.Tensor
    label: int


def main() -> None:
    args, run = faithfulness_args(__doc__.splitlines()[0], "clips")
    task, model = run.task, run.model.eval()
    cfg = model.config
    if cfg.head != "classify" or cfg.encoder != "attention" or len(cfg.conv_channels) != 2:
        raise SystemExit(f"{args.run_dir}: needs the classifier head, the attention encoder and 2 conv blocks")
    task.build_data(run.cfg)
    utterances = task.data.splits["test"][: args.n]
    layers = [f"layers.{i}.self_attn" for i in range(len(model.layers))]
    start = time.perf_counter()
    inputs, methods = [], {"attention": [], "rollout": [], "gradient × attention": [], "input × gradient": []}
    for utterance in utterances:
        features = utterance.features[None]  # (1, T, M)
        lengths = torch.tensor([features.shape[1]])
        with torch.no_grad():
            label = int(model(features, lengths)[0].argmax(-1))

        def score(features=features, lengths=lengths, label=label):
            return model(features, lengths)[0][:, label]  # (1,): the predicted class's logit

        with torch.no_grad(), capture(model) as seen:
            model(features, lengths)
        maps = [seen[name] for name in layers]  # each (1, H, T', T')
        units = maps[-1].shape[-1]
        attention = maps[-1][0].mean(0).mean(0)  # (T',): received, mean over heads and queries
        rolled = attention_rollout(maps)[0].mean(0)  # (T', T') -> (T',): what the mean pooling reads
        gxa = gradient_x_attention(model, score, [layers[-1]])[layers[-1]][0].sum(0)  # (T',)
        ixg = input_x_gradient(model.front, score)[0]  # (T',)
        clip = Clip(range(units))
        clip.features, clip.label = utterance.features, label
        inputs.append(clip)
        for name, weights in zip(methods, (attention, rolled, gxa, ixg), strict=True):
            methods[name].append(ranking(weights))

    def reduce(clip, keep):
        last = len(keep) - 1  # the last encoder frame also stands for any frames left over
        frames = [t for t in range(clip.features.shape[0]) if keep[min(t // FRAMES_PER_UNIT, last)]]
        if not frames:  # everything removed: one silent frame, so the model still hears a clip
            return clip.label, torch.zeros(1, clip.features.shape[1])
        return clip.label, clip.features[frames]

    @torch.no_grad()
    def prob(batch):
        padded = task.pad([features for _, features in batch])
        logits, _ = model(padded["features"], padded["lengths"])  # (B, n_classes)
        labels = torch.tensor([label for label, _ in batch])
        return logits.softmax(-1).gather(-1, labels[:, None])[:, 0]

    table = faithfulness_table(prob, inputs, methods, draws=args.draws, reduce=reduce)
    seconds = time.perf_counter() - start
    report_faithfulness(table, run.run_dir, len(inputs), "clips", "encoder frames (40 ms)", args.draws, seconds)


if __name__ == "__main__":
    main()
