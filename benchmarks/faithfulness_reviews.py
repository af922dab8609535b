"""ERASER faithfulness of a review classifier's explanations: attention, rollout, gradient ×
attention and input × gradient against random rankings.

    python benchmarks/faithfulness_reviews.py runs/reviews [--n 300] [--draws 5]

A classify run with a Transformer encoder and attention pooling. Units are the sentencepiece
tokens of each test review's window (the <bos> position, where nothing is written, always
stays); removing a unit deletes it (ERASER). Rankings:

* attention — the pooling attention over the tokens (what `heedful predict --explain` shows);
* rollout — that pooling attention pushed through the encoder's attention rollout
  (pool · R: how much of each input token reaches the pooled vector);
* gradient × attention — the pooling attention times its gradient (predicted class's logit);
* input × gradient — embedding · gradient per token (the non-attention control).

Writes RUN/faithfulness.json, which `heedful report RUN` shows.
"""

from __future__ import annotations

import time

import torch

from common import faithfulness_args, report_faithfulness
from heedful.data.tokenizers import pad_ids
from heedful.explain.capture import capture
from heedful.explain.faithfulness import faithfulness_table, ranking
from heedful.explain.rollout import attention_rollout, gradient_x_attention, input_x_gradient


class Units(list):
    """A review's tokens after <bos>, with the class the model predicted for the whole review."""

    target: int


def main() -> None:
    args, run = faithfulness_args(__doc__.splitlines()[0], "reviews", seed=0)
    task, model = run.task, run.model
    task.build_data(run.cfg)
    task.load_artifacts(run.run_dir / "model")
    texts = [t for t in task.split_inputs("test") if len(task.encode(t)) > 2][: args.n]
    start = time.perf_counter()
    inputs, methods = [], {"attention": [], "rollout": [], "gradient × attention": [], "input × gradient": []}
    for text in texts:
        ids = task.encode(text)
        tokens = torch.tensor([ids])
        with torch.no_grad(), capture(model) as seen:
            logits = model(tokens)
        target = int(logits.argmax(-1))
        pool = seen["pool.attn"][0, 0, 0].float()  # (B, 1 head, 1 query, T) -> (T,)
        layers = [seen[f"encoder.layers.{i}.self_attn"] for i in range(len(model.encoder.layers))]
        rolled = pool @ attention_rollout(layers)[0]  # (T,): pooled vector ← input tokens

        def score(tokens=tokens, target=target):
            return model(tokens)[:, target]

        gxa = gradient_x_attention(model, score, ["pool.attn"])["pool.attn"][0, 0]  # (T,)
        ixg = input_x_gradient(model.encoder.embed.embedding, score)[0]  # (T,)
        units = Units(ids[1:])
        units.target = target
        inputs.append(units)
        for name, weights in zip(methods, (pool, rolled, gxa, ixg), strict=True):
            methods[name].append(ranking(weights[1:]))

    bos = ids[0]

    def reduce(x, keep):
        return x.target, [bos] + [u for u, k in zip(x, keep, strict=True) if k]

    @torch.no_grad()
    def prob(batch):
        tokens = pad_ids([ids for _, ids in batch], task.pad_id)  # (B, T)
        probs = model(tokens).softmax(-1)  # (B, C)
        return probs[torch.arange(len(batch)), torch.tensor([t for t, _ in batch])]

    model.eval()
    table = faithfulness_table(prob, inputs, methods, draws=args.draws, reduce=reduce)
    seconds = time.perf_counter() - start
    report_faithfulness(table, run.run_dir, len(inputs), "reviews", "tokens", args.draws, seconds)


if __name__ == "__main__":
    main()
