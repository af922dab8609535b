"""Corpus scores of translations: sacreBLEU's BLEU and chrF, detokenized and case-sensitive,
against the untokenized references."""

from __future__ import annotations

from typing import Any


def bleu_tokenizer(lang: str) -> str:
    """sacreBLEU's standard tokenizer for the target language (13a, or zh for Chinese)."""
    return "zh" if lang.split("-")[0].lower() == "zh" else "13a"


def bleu_and_chrf(hyps: list[str], refs: list[str], target_lang: str) -> tuple[dict[str, float], dict[str, Any]]:
    """{"bleu", "chrf"} of the hypotheses against one reference each, and the notes that make the
    scores reproducible: sacreBLEU's signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(tokenize=bleu_tokenizer(target_lang)), CHRF()
    bleu_score, chrf_score = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])
    notes = {"bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}
    return {"bleu": bleu_score.score, "chrf": chrf_score.score}, notes
