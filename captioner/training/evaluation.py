"""Caption metrics computed the way the COCO caption evaluation computes them.

``score_captions`` runs pycocoevalcap's scorers on PTB-tokenised text: BLEU-1..4 (corpus level,
``closest`` reference length for the brevity penalty), METEOR 1.5, ROUGE-L (beta 1.2, mean over
images) and CIDEr. pycocoevalcap's ``Cider`` is the CIDEr-D variant used by the COCO leaderboard:
TF-IDF n-gram vectors (n = 1..4) with the IDF taken from the references of the images being
scored, candidate counts clipped to the reference counts, a Gaussian length penalty
(sigma = 6) and a factor of 10. Because the IDF comes from the scored set, CIDEr of a single
image is always 0: score at least a few images.

PTB tokenisation and METEOR run on Java (the Stanford CoreNLP and METEOR jars inside
pycocoevalcap). Without ``java`` the text is tokenised by ``ptb_tokenize``, a pure-Python
tokeniser that gives the same tokens on ordinary captions, and METEOR is ``None``
(``METEOR_NEEDS_JAVA`` says why). SPICE is not computed: it downloads Stanford models.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as _meteor_module
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer as _ptb_module

logger = logging.getLogger(__name__)

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
METEOR_NEEDS_JAVA = "METEOR needs Java, which was not found"

# pycocoevalcap drops these tokens after PTB tokenisation. It compares them with lower-cased
# output, so the bracket tokens (-lrb- ...) survive; the same happens here.
PUNCTUATIONS = frozenset(_ptb_module.PUNCTUATIONS)
_PTB_JAR = os.path.join(
    os.path.dirname(os.path.abspath(_ptb_module.__file__)), _ptb_module.STANFORD_CORENLP_3_4_1_JAR
)
_METEOR_DIR = os.path.dirname(os.path.abspath(_meteor_module.__file__))


def find_java() -> str | None:
    """The ``java`` executable on PATH, or None."""
    return shutil.which("java")


def score_captions(
    references: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    *,
    use_java: bool = True,
) -> dict[str, float | None]:
    """Score one predicted caption per image against that image's reference captions.

    Returns ``{name: value}`` for ``METRICS``; ``METEOR`` is None when Java is missing
    (or ``use_java`` is False) or the METEOR process fails; the reason is logged.
    """
    ids = _check_inputs(references, predictions)
    java = find_java() if use_java else None
    sentences = [caption for key in ids for caption in references[key]]
    sentences += [predictions[key] for key in ids]
    tokens = iter(_tokenize(sentences, java))
    gts = {key: [next(tokens) for _ in references[key]] for key in ids}
    res = {key: [next(tokens)] for key in ids}

    scores: dict[str, float | None] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n, value in enumerate(bleu, start=1):
        scores[f"BLEU-{n}"] = float(value)
    if java is None and use_java:
        logger.warning(METEOR_NEEDS_JAVA)
    scores["METEOR"] = _meteor(gts, res, java) if java is not None else None
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return {name: scores[name] for name in METRICS}


def score_constant_captions(references: Mapping[str, Sequence[str]], candidates: Sequence[str],
                            metric: str) -> list[float]:
    """``metric`` (any of ``METRICS`` but METEOR) of each candidate given as the caption of every image.

    Computed as ``score_captions(..., use_java=False)`` would, with the references tokenised once.
    """
    if metric == "METEOR" or metric not in METRICS:
        raise ValueError(f"cannot score constant captions by {metric!r}")
    ids = _check_inputs(references, {key: "" for key in references})
    tokens = iter(_tokenize([caption for key in ids for caption in references[key]], None))
    gts = {key: [next(tokens) for _ in references[key]] for key in ids}
    scores = []
    for candidate in _tokenize(list(candidates), None):
        res = {key: [candidate] for key in ids}
        if metric.startswith("BLEU-"):
            scores.append(float(Bleu(4).compute_score(gts, res, verbose=0)[0][int(metric[-1]) - 1]))
        elif metric == "ROUGE-L":
            scores.append(float(Rouge().compute_score(gts, res)[0]))
        else:
            scores.append(float(Cider().compute_score(gts, res)[0]))
    return scores


def format_scores(scores: Mapping[str, float | None]) -> str:
    """One ``NAME value`` line per metric, values to 4 decimals."""
    width = max(len(name) for name in scores) if scores else 0
    lines = []
    for name, value in scores.items():
        if value is None:
            shown = "n/a (needs Java)" if name == "METEOR" else "n/a"
        else:
            shown = f"{value:.4f}"
        lines.append(f"{name:<{width}} {shown}")
    return "\n".join(lines)


def _check_inputs(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> list[str]:
    if not references:
        raise ValueError("There are no images to score.")
    missing = [key for key in references if key not in predictions]
    extra = [key for key in predictions if key not in references]
    if missing or extra:
        raise ValueError(
            "References and predictions must cover the same images: "
            f"{len(missing)} without a prediction (e.g. {missing[:3]}), "
            f"{len(extra)} without references (e.g. {extra[:3]})."
        )
    for key, refs in references.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"Image {key!r} needs a non-empty list of reference captions.")
        if not isinstance(predictions[key], str):
            raise ValueError(f"The prediction for image {key!r} is not a string.")
    return list(references)


# ----------------------------------------------------------------------------- tokenising


def _one_line(text: str) -> str:
    """Every kind of line break (the Java tokeniser splits on \\r, \\f, U+2028 ...) -> space."""
    return " ".join(text.splitlines())


def _drop_punctuation(line: str) -> str:
    return " ".join(word for word in line.rstrip().split(" ") if word not in PUNCTUATIONS)


def _tokenize(sentences: list[str], java: str | None) -> list[str]:
    if java is not None:
        try:
            return _java_tokenize(sentences, java)
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            logger.warning("Java PTB tokeniser failed (%s); using the Python tokeniser.", exc)
    return [ptb_tokenize(sentence) for sentence in sentences]


def _java_tokenize(sentences: list[str], java: str) -> list[str]:
    """pycocoevalcap's PTBTokenizer call, fed through stdin instead of a temporary file
    written into the installed package (which may be read-only)."""
    text = "".join(_one_line(sentence) + "\n" for sentence in sentences)
    done = subprocess.run(
        [java, "-cp", _PTB_JAR, "edu.stanford.nlp.process.PTBTokenizer",
         "-preserveLines", "-lowerCase", "-encoding", "utf-8"],
        input=text.encode("utf-8"),
        capture_output=True,
        timeout=120 + len(sentences) // 100,
        check=False,
    )
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()[-300:]
        raise RuntimeError(f"exit status {done.returncode}: {message}")
    lines = done.stdout.decode("utf-8").split("\n")
    if len(lines) < len(sentences):
        raise RuntimeError(f"{len(lines)} lines back for {len(sentences)} sentences")
    return [_drop_punctuation(line) for line in lines[: len(sentences)]]


_TRANSLATE = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                            "\u2013": "--", "\u2014": "--", "\u2026": "..."})
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_ABBREVIATIONS = frozenset("mr mrs ms dr st jr sr vs etc prof mt ft ave inc ltd co corp".split())
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "wanna": ("wan", "na"),
                "gotta": ("got", "ta")}
_CONTRACTION = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_TOKEN = re.compile(
    r"""
      (?:https?://|www\.)\S+                     # web address
    | [\w.+-]+@[\w-]+(?:\.[\w-]+)+               # e-mail address
    | (?:[^\W\d_]\.){2,}                         # u.s.  p.m.  e.g.
    | \d+(?:[.,:]\d+)+                           # 3:30  5.50  1,000
    | [#@]?\w+(?:(?:[-./&]|'(?=[^\W\d_]))\w+)*   # words: black-and-white, isn't, o'clock, and/or
    | \.{2,} | -{2,} | [?!]+                     # ellipsis, dash, !!! ?!
    | \S                                         # any other single character
    """,
    re.VERBOSE,
)


def ptb_tokenize(sentence: str) -> str:
    """Lower-cased PTB tokens without punctuation, joined by spaces.

    A Python stand-in for pycocoevalcap's PTBTokenizer (Stanford PTBTokenizer followed by
    removing ``PUNCTUATIONS``), used when Java is missing. It splits punctuation, ``$``, ``%``
    and contractions (``isn't`` -> ``is n't``, ``dog's`` -> ``dog 's``) the way the Stanford
    tokeniser does, keeps hyphenated words, numbers and abbreviations whole, and writes
    brackets as ``-lrb-`` etc. Rare constructs (SGML tags, ``y'all``) may differ.
    """
    tokens: list[str] = []
    for token in _TOKEN.findall(_one_line(sentence).lower().translate(_TRANSLATE)):
        if token in _BRACKETS:
            tokens.append(_BRACKETS[token])
        elif token == '"':
            tokens.append("''")
        elif token.startswith(".."):
            tokens.extend([".", "."] if token == ".." else ["..."])
        elif token.startswith("--"):
            tokens.append("--")
        elif token in _SPLIT_WORDS:
            tokens.extend(_SPLIT_WORDS[token])
        elif token == "." and tokens and tokens[-1] in _ABBREVIATIONS:
            tokens[-1] += "."
        elif match := _CONTRACTION.match(token):
            tokens.extend(match.groups())
        else:
            tokens.append(token)
    return " ".join(token for token in tokens if token not in PUNCTUATIONS)


# --------------------------------------------------------------------------------- METEOR


class MeteorProcess:
    """METEOR 1.5 (the jar inside pycocoevalcap) as a child process with an explicit lifetime.

    It speaks the jar's ``-stdio`` protocol as pycocoevalcap's ``Meteor.compute_score`` does
    (one ``SCORE`` line per image, then one ``EVAL`` line), with the ``java`` found on PATH.
    ``with`` closes the process; stderr goes to /dev/null (an unread pipe could fill up and
    block java), and a watchdog kills java if it stops answering, so a stuck process ends in an
    error instead of a hang.
    """

    def __init__(self, java: str, timeout_s: float) -> None:
        command = [java, "-jar", "-Xmx2G", _meteor_module.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
        self.process = subprocess.Popen(command, cwd=_METEOR_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL)
        self._watchdog = threading.Timer(timeout_s, self.process.kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    def __enter__(self) -> MeteorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def compute_score(self, gts: Mapping[str, Sequence[str]], res: Mapping[str, Sequence[str]]) -> float:
        """The corpus METEOR of one prediction per image (``res[key] == [caption]``) against ``gts[key]``."""
        stats = []
        for key in gts:
            hypothesis = res[key][0].replace("|||", "").replace("  ", " ")
            self._send(" ||| ".join(("SCORE", " ||| ".join(gts[key]), hypothesis)))
            stats.append(self._read())
        self._send(" ||| ".join(("EVAL", *stats)))
        for _ in stats:  # the per-image scores come first, then the corpus score
            self._read()
        return float(self._read())

    def _send(self, line: str) -> None:
        self.process.stdin.write(f"{line}\n".encode())
        self.process.stdin.flush()

    def _read(self) -> str:
        answer = self.process.stdout.readline()
        if not answer:
            raise ValueError("the METEOR process ended without an answer")
        return answer.decode().strip()

    def close(self) -> None:
        self._watchdog.cancel()
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]], java: str) -> float | None:
    # METEOR's line protocol separates fields with |||; the tokens must not contain it.
    gts = {key: [ref.replace("|||", "| | |") for ref in refs] for key, refs in gts.items()}
    try:
        with MeteorProcess(java, timeout_s=120 + 0.05 * len(gts)) as meteor:
            return meteor.compute_score(gts, res)
    except (OSError, ValueError) as exc:
        logger.warning("METEOR failed and is left out: %s", exc)
        return None
