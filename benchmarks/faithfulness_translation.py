"""ERASER faithfulness for translation: which source tokens does the probability of the
reference translation depend on?

    python benchmarks/faithfulness_translation.py runs/dates [--n 300] [--draws 5]
    python benchmarks/faithfulness_translation.py runs/multi30k-transformer --n 300

Any Transformer translate run: the dates model (units: source characters) or a Multi30k model
(units: source sentencepiece pieces). Removing a unit deletes it. The score is the mean
probability of the reference's tokens (its target pieces and <eos>) under forced decoding
(teacher forcing on the reference), over the run's test split. Rankings, each a total over the output steps:

* attention — the last decoder layer's cross-attention (mean over heads), summed over steps;
* rollout — the cross-attention of every decoder layer (mean), pushed back through the encoder's
  attention rollout: (T, S) · (S, S), summed over steps;
* gradient × attention — the last layer's cross-attention times its gradient;
* input × gradient — embedding · gradient per source character (the non-attention control).

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
    """A source's token ids, with its reference output ids (<bos> … <eos>)."""

    reference: list[int]


def main() -> None:
    args, run = faithfulness_args(__doc__.splitlines()[0], "examples")
    task, model = run.task, run.model
    task.build_data(run.cfg)
    task.load_artifacts(run.run_dir / "model")
    examples = task.data.splits["test"][: args.n]
    n_enc, n_dec = len(model.encoder.layers), len(model.decoder.layers)
    last = model.cross_attention_name(-1)
    start = time.perf_counter()
    inputs, methods = [], {"attention": [], "rollout": [], "gradient × attention": [], "input × gradient": []}
    for example in examples:
        src_ids = task.src_tok.encode(example.source)
        reference = task.tgt_tok.encode(example.target, bos=True, eos=True)
        src, tgt = torch.tensor([src_ids]), torch.tensor([reference])

        def score(src=src, tgt=tgt):
            logp = model(src, tgt[:, :-1]).log_softmax(-1)  # (1, T, V)
            return logp.gather(-1, tgt[:, 1:, None])[..., 0].sum(-1)  # (1,): log p(reference)

        with torch.no_grad(), capture(model) as seen:
            model(src, tgt[:, :-1])
        cross = seen[last][0].mean(0)  # (T, S)
        encoder = attention_rollout([seen[f"encoder.layers.{i}.self_attn"] for i in range(n_enc)])[0]  # (S, S)
        every = torch.stack([seen[model.cross_attention_name(i)][0].mean(0) for i in range(n_dec)]).mean(0)  # (T, S)
        rolled = (every @ encoder).sum(0)  # (S,)
        gxa = gradient_x_attention(model, score, [last])[last][0].sum(0)  # (S,)
        ixg = input_x_gradient(model.encoder.embed.embedding, score, call=0)[0]  # (S,): the source's lookup
        units = Units(src_ids)
        units.reference = reference
        inputs.append(units)
        for name, weights in zip(methods, (cross.sum(0), rolled, gxa, ixg), strict=True):
            methods[name].append(ranking(weights))

    def reduce(x, keep):
        return x.reference, [u for u, k in zip(x, keep, strict=True) if k]

    @torch.no_grad()
    def prob(batch):
        src = pad_ids([ids for _, ids in batch], task.src_tok.pad_id)  # (B, S)
        tgt = pad_ids([ref for ref, _ in batch], task.tgt_tok.pad_id)  # (B, T + 1)
        p = model(src, tgt[:, :-1]).softmax(-1).gather(-1, tgt[:, 1:, None])[..., 0]  # (B, T)
        real = (tgt[:, 1:] != task.tgt_tok.pad_id).float()
        return (p * real).sum(-1) / real.sum(-1)  # mean probability of the reference's tokens

    model.eval()
    table = faithfulness_table(prob, inputs, methods, draws=args.draws, reduce=reduce)
    seconds = time.perf_counter() - start
    units = "source pieces" if run.cfg.data.source == "parallel" else "characters"
    report_faithfulness(table, run.run_dir, len(inputs), "examples", units, args.draws, seconds)


if __name__ == "__main__":
    main()
