"""Output lines are scrubbed a chunk at a time and remembered by shape (digits aside):
the fast path must decide exactly as scrubbing each line would, for every built-in rule,
registered values and added patterns; a private key printed line by line is hidden
whole. Real ledger in a real git repository; fresh processes where global rules change."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from test_secrets import MARK, PEM, TEXT_NEGATIVES, TEXT_POSITIVES

import otel_runs
from otel_runs.ledger import ledger_for
from otel_runs.redaction import scrub_text
from otel_runs.redaction._text import scrub_texts


def _other_digits(text: str, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("0123456789") if c.isdigit() else c for c in text)


def test_a_secret_line_and_its_digit_variants_are_all_scrubbed() -> None:
    for text, _ in TEXT_POSITIVES:
        for seed in range(5):
            variant = _other_digits(text, seed)
            assert MARK.search(scrub_text(variant)) is None, variant  # the variant's too
    pypi = "pypi-AgEIcHlwaS5vcmcCJGE0ZTU1NGZlLTQ2ZDgtNDI5OS1hYmY4"
    assert scrub_text(pypi) == "***" and scrub_text(pypi.replace("S5", "S7")) == "***"


def test_scrubbing_a_chunk_equals_scrubbing_each_line() -> None:
    rng = random.Random(7)
    corpus = [t for t, _ in TEXT_POSITIVES if "\n" not in t] + TEXT_NEGATIVES + [
        "Step 3/12 : RUN pip install -r requirements.txt",
        " ---> Running in 4f9c2a1b7d3e",
        "tests/test_api.py ........................                [ 42%]",
        "aws_instance.web[3]: Still creating... [20s elapsed]",
    ]
    for _ in range(200):
        lines = [_other_digits(rng.choice(corpus), rng.randrange(1 << 30))
                 for _ in range(rng.randrange(1, 60))]
        assert scrub_texts(lines) == [scrub_text(line) for line in lines]
        assert scrub_texts(lines) == [scrub_text(line) for line in lines]  # now remembered


def _fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_registered_value_is_found_in_a_line_whose_shape_was_clean() -> None:
    out = _fresh(
        "from otel_runs.redaction import add_secret_values, scrub_text\n"
        "from otel_runs.redaction._text import scrub_texts\n"
        "add_secret_values('4711')\n"
        "print(scrub_text('build 1234 done'))\n"  # clean: its shape is remembered
        "print(scrub_text('build 4711 done'))\n"
        "print(scrub_texts(['build 1234 done', 'build 4711 done']))\n")
    assert out.splitlines() == ["build 1234 done", "build *** done",
                                "['build 1234 done', 'build *** done']"]


def test_an_added_pattern_that_tells_digits_apart_turns_shapes_off() -> None:
    out = _fresh(
        "from otel_runs.redaction import add_secret_patterns, add_secret_key_parts, scrub_text\n"
        "from otel_runs.redaction._text import scrub_texts\n"
        "add_secret_patterns(r'\\b4[0-9]{15}\\b', anchors=['4'])\n"
        "print(scrub_texts(['card 5111222233334444']))\n"
        "print(scrub_texts(['card 4111222233334444']))\n"
        "add_secret_key_parts('pin2')\n"
        "print(scrub_text('pin1=1234'), scrub_text('pin2=1234'))\n")
    assert out.splitlines() == ["['card 5111222233334444']", "['card ***']",
                                "pin1=1234 pin2=***"]


def test_a_private_key_printed_line_by_line_is_hidden_whole(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    body = PEM.splitlines()
    with otel_runs.tracked_run(git_repo, "backup", "backup:keys") as run:
        run.log("exporting the key:")
        for line in body:  # one call per line, as a tool's output arrives
            run.log(line)
        run.log("exported", stream="err")
        print(PEM, file=run.output)  # all at once
        run.log("done")
    ledger = ledger_for(git_repo)
    assert ledger.flush(30)
    texts = [line["text"] for line in ledger.output(run.run_id) or []]
    assert texts[0] == "exporting the key:" and texts[-1] == "done" and "exported" in texts
    for secret in body[1:-1]:
        assert all(secret not in text for text in texts), secret
    assert len(texts) == 3 + 2 * len(body)  # line numbering unchanged: one *** a line
    assert texts.count("***") == 2 * len(body)


def test_a_chunks_json_is_its_lines_encoded_once() -> None:
    import json

    from otel_runs._output import RunOutput
    from otel_runs._output_lines import _encode_lines, lines_json

    got: list[list[dict]] = []

    class Entry:
        pass

    for leveled in (False, True):  # (lines without a level are encoded column by column)
        out = RunOutput(Entry(), 0)
        for text in ["plain", 'quotes " and \\ back', "tab\tand é and \u2028",
                     "\x1b[31mred\x1b[0m", ""]:
            out.write("out", text)
        out.write("err", "to stderr")
        if leveled:
            out.write("log", "a record", level="WARNING", logger="lib.x")
        got.append(out.kept())
    for lines in got:
        text = lines_json(lines)
        assert json.loads(text) == list(lines)
        assert text == _encode_lines(lines) == lines_json(lines)  # the same text each time


def test_the_shape_cache_stays_bounded_and_right_when_full() -> None:
    from otel_runs.redaction import _text

    words = [f"w{'x' * (i % 7)}{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}" for i in range(3 * 4_096)]
    for i, word in enumerate(words):  # three times as many clean shapes as it holds
        assert scrub_texts([f"{word} done in {i} ms"]) == [f"{word} done in {i} ms"]
        assert len(_text._clean) <= _text._CLEAN_CACHE_MAX
    for text, _ in TEXT_POSITIVES:  # secrets are still found, cached shapes or not
        assert MARK.search(scrub_text(text)) is None, text
        if "\n" not in text:  # (a key across lines: RunOutput hides it, test above)
            assert MARK.search(scrub_texts([text, "clean line 1"])[0]) is None, text
