"""The peers a text classifier is measured against, fit on the same training texts it learned from.

majority  always the most frequent training label
tfidf_lr  TF-IDF (sublinear term frequency, terms in ≥ 2 texts) and a class-balanced logistic
          regression (scikit-learn): a strong bag-of-n-grams baseline for short reviews. Word
          1–2-grams, or character 1–3-grams for text written without spaces between words
          (Chinese, Japanese), where words would be whole sentences.

A model that does not beat ``tfidf_lr`` has learned little beyond which words mark which label;
``heedful evaluate`` prints both beside the model's figures.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from torch import Tensor

from heedful.errors import UserError

Ngrams = Literal["word", "char"]


# Scripts written without spaces between words: Thai, Lao, Myanmar, Khmer, Japanese kana and the
# CJK ideographs (Korean Hangul is written with spaces, so it is not among them).
UNSPACED = re.compile("[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")


def ngram_kind(texts: list[str]) -> Ngrams:
    """``char`` when at least a third of the texts' letters belong to a script written without
    spaces between words (Chinese, Japanese, Thai, …), else ``word``."""
    letters = sum(sum(c.isalpha() for c in t) for t in texts)
    unspaced = sum(len(UNSPACED.findall(t)) for t in texts)
    return "char" if letters and unspaced / letters >= 1 / 3 else "word"


def fit_tfidf_lr(texts: list[str], labels: list[int], ngrams: Ngrams = "word"):
    """The fitted (vectorizer, logistic regression) of ``tfidf_lr``."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise UserError("the TF-IDF baseline needs scikit-learn: pip install 'heedful[classify]'") from None
    grams = {"analyzer": "char", "ngram_range": (1, 3)} if ngrams == "char" else {"ngram_range": (1, 2)}
    vectorizer = TfidfVectorizer(**grams, sublinear_tf=True, min_df=2)
    try:
        features = vectorizer.fit_transform(texts)
    except ValueError:  # a handful of texts sharing no term: keep every term
        vectorizer = TfidfVectorizer(**grams, sublinear_tf=True, min_df=1)
        features = vectorizer.fit_transform(texts)
    return vectorizer, LogisticRegression(max_iter=2000, class_weight="balanced").fit(features, labels)


def baseline_probabilities(
    train_texts: list[str], train_labels: list[int], texts: list[str], n_classes: int, ngrams: Ngrams | None = None
) -> dict[str, Tensor]:
    """Each baseline's class probabilities (N, C) for ``texts``, fit on the training texts and
    labels (class indices < ``n_classes``); ``ngrams`` None: chosen by ``ngram_kind``."""
    majority = max(range(n_classes), key=train_labels.count)  # on a tie, the lowest class
    probs = {"majority": torch.nn.functional.one_hot(torch.full((len(texts),), majority), n_classes).float()}
    if len(set(train_labels)) < 2:  # nothing to tell apart: a regression would refuse to fit
        probs["tfidf_lr"] = probs["majority"].clone()
        return probs
    vectorizer, lr = fit_tfidf_lr(train_texts, train_labels, ngrams or ngram_kind(train_texts))
    tfidf = torch.zeros(len(texts), n_classes)  # (N, C): a class absent from training keeps probability 0
    tfidf[:, torch.as_tensor(lr.classes_)] = torch.as_tensor(lr.predict_proba(vectorizer.transform(texts))).float()
    probs["tfidf_lr"] = tfidf
    return probs
