"""Data files read as they are written: strict UTF-8 (a bad byte named by file, line and byte
offset), a byte-order mark as Excel writes it, one format per folder, KTO labels checked as
the file writes them (not as datasets converts a mixed column), and a preference set whose
every pair is a tie refused.

The loader is tested in this process; the same files then go through the entry points as
users type them (a subprocess from another directory, the script by its relative path): one
line, exit status 2, nothing left behind.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from align.data import DataConfig, DataError, load_stage_data

datasets.disable_progress_bars()

REPO = Path(__file__).resolve().parent.parent

PAIRS = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(6)]


def jsonl_bytes(rows) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


def with_bad_byte(rows, row: int) -> bytes:
    """JSON Lines whose `row` (0-based) holds a byte that is not UTF-8 (0xff) in a string."""
    lines = jsonl_bytes(rows).split(b"\n")
    lines[row] = lines[row].replace(b'": "', b'": "\xff', 1)
    return b"\n".join(lines)


def load(path, stage, **cfg):
    return load_stage_data(DataConfig(path=str(path), **cfg), stage)


# --------------------------------------------------------------------------- strict UTF-8


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "json", "csv"])
def test_a_byte_that_is_not_utf8_is_named_by_file_line_and_offset(tmp_path, kind):
    if kind == "csv":
        text = ("prompt,chosen,rejected\n"
                + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in PAIRS)).encode()
        data = text.replace(b"3+1=", b"3+1=\xe9", 1)  # latin-1 'é' inside line 5
        line = 5
    elif kind == "json":
        data = json.dumps(PAIRS, indent=1).encode().replace(b'"2+1=', b'"2+1=\xff', 1)
        line = data[:data.index(b"\xff")].count(b"\n") + 1
    else:
        data, line = with_bad_byte(PAIRS, 3), 4
    path = tmp_path / f"train.{kind}"
    path.write_bytes(gzip.compress(data) if kind.endswith(".gz") else data)
    offset = data.index(b"\xe9" if kind == "csv" else b"\xff")
    with pytest.raises(DataError) as err:
        load(path, "dpo")
    assert str(err.value).startswith(f"{path}: line {line}, byte offset {offset}: not UTF-8"), err.value
    assert "\n" not in str(err.value)


def test_the_check_reads_a_character_split_between_two_blocks(tmp_path, monkeypatch):
    """The file is decoded in blocks: a multi-byte character cut by a block boundary is not a
    bad byte, and a bad byte after many blocks still gets its own line and offset."""
    from align.data import sources
    from align.data.sources import check_utf8

    monkeypatch.setattr(sources, "_DECODE_BLOCK", 5)
    text = "".join(f"ligne {i}: «é» ✓ 𝔸\n" for i in range(40)).encode()
    path = tmp_path / "train.jsonl"
    path.write_bytes(text)
    check_utf8(str(path))  # every split point inside é, ✓ and 𝔸 is crossed at some line
    bad = text + b"ligne 40: ok\n" + b"ligne 41: \xc3(\n"
    path.write_bytes(bad)
    offset = bad.index(b"\xc3(")
    with pytest.raises(DataError, match=rf"line 42, byte offset {offset}: not UTF-8"):
        check_utf8(str(path))
    path.write_bytes(text + b"\xe2\x9c")  # a character cut by the end of the file
    with pytest.raises(DataError, match=rf"line 41, byte offset {len(text)}: not UTF-8"):
        check_utf8(str(path))


def test_a_folder_names_the_file_with_the_bad_byte(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(jsonl_bytes(PAIRS))
    (folder / "test.jsonl").write_bytes(with_bad_byte(PAIRS, 1))
    with pytest.raises(DataError, match=r"test\.jsonl: line 2, byte offset \d+: not UTF-8"):
        load(folder, "dpo", eval_split="test")


# --------------------------------------------------------------------------- byte-order mark


def test_a_csv_saved_by_excel_with_a_bom_reads_its_header(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\r\n"
                    + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\r\n" for r in PAIRS),
                    encoding="utf-8-sig")  # what Excel's "CSV UTF-8" writes
    assert path.read_bytes().startswith(b"\xef\xbb\xbfprompt")
    data = load(path, "dpo")
    assert data.train.column_names == ["prompt", "chosen", "rejected"]
    assert data.train[0] == {"prompt": "0+1=", "chosen": "1", "rejected": "2"}


def test_a_jsonl_with_a_bom_reports_its_bad_row_by_line(tmp_path):
    rows = [dict(r) for r in PAIRS]
    rows[2]["chosen"] = 3
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl_bytes(rows))
    with pytest.raises(DataError, match=r"pairs\.jsonl: row 2 \(line 3\): field 'chosen': "
                                        r".*got int"):
        load(path, "dpo")
    path.write_bytes(b"\xef\xbb\xbf" + jsonl_bytes(PAIRS))
    assert load(path, "dpo").train[0]["prompt"] == "0+1="


# --------------------------------------------------------------------------- one format per folder


def test_a_folder_of_two_formats_is_an_error_naming_the_files(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "pairs.jsonl").write_bytes(jsonl_bytes(PAIRS))
    (folder / "more.csv").write_text("prompt,chosen,rejected\n9+1=,10,11\n")
    (folder / "README.md").write_text("# pairs\n")  # not a data file: not counted
    with pytest.raises(DataError) as err:
        load(folder, "dpo")
    message = str(err.value)
    assert message.startswith(f"{folder}: the folder holds data files of more than one format")
    assert "csv: more.csv" in message and "json: pairs.jsonl" in message
    (folder / "more.csv").unlink()
    (folder / "more.json").write_text(json.dumps([{"prompt": "9+1=", "chosen": "10",
                                                    "rejected": "11"}]))
    assert len(load(folder, "dpo").train) == len(PAIRS) + 1  # .json and .jsonl: one format


# --------------------------------------------------------------------------- KTO labels


@pytest.mark.parametrize("written", ['"true"', '"false"', '"True"', '"yes"', "1"])
def test_a_kto_label_that_is_not_a_json_boolean_among_booleans_names_file_row_field(tmp_path,
                                                                                  written):
    rows = [{"prompt": f"{i}+1=", "completion": str(i + 1), "label": i % 2 == 0} for i in range(6)]
    text = jsonl_bytes(rows).decode().splitlines()
    text[3] = text[3].replace('"label": false', f'"label": {written}')
    path = tmp_path / "unpaired.jsonl"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError) as err:
        load(path, "kto")
    assert str(err.value).startswith(f"{path}: row 3 (line 4): field 'label': "), err.value
    assert "expected the boolean true or false" in str(err.value)

    # In a folder the row is named by its file.
    folder = tmp_path / "data"
    folder.mkdir()
    path.rename(folder / "train.jsonl")
    with pytest.raises(DataError, match=r"row 3 \(train\.jsonl, line 4\): field 'label'"):
        load(folder, "kto")


def test_a_column_of_two_types_is_checked_as_written(tmp_path):
    """A prompt column of strings and message lists is two types (datasets' Json feature):
    checked row by row as written. Rows that normalise to one kind train; rows that stay two
    kinds (trl formats a whole dataset one way) are named by the first odd row."""
    path = tmp_path / "unpaired.jsonl"
    mixed = [{"prompt": "1+1=", "completion": "2", "label": True},
             {"prompt": [{"role": "user", "content": "2+2="}], "completion": "5", "label": False}]
    path.write_bytes(jsonl_bytes(mixed))
    with pytest.raises(DataError, match=r"unpaired\.jsonl: row 1 \(line 2\): field 'prompt': a list "
                                        r"of messages, but row 0 has a plain string"):
        load(path, "kto")
    # A plain prompt next to conversational answers becomes the user turn: one kind.
    pairs = [{"prompt": "1+1=", "chosen": [{"role": "assistant", "content": "2"}],
              "rejected": [{"role": "assistant", "content": "3"}]},
             {"prompt": [{"role": "user", "content": "2+2="}],
              "chosen": [{"role": "assistant", "content": "4"}],
              "rejected": [{"role": "assistant", "content": "5"}]}]
    path.write_bytes(jsonl_bytes(pairs))
    data = load(path, "dpo")
    assert data.train["prompt"] == [[{"role": "user", "content": "1+1="}],
                                    [{"role": "user", "content": "2+2="}]]


# --------------------------------------------------------------------------- ties


@pytest.mark.parametrize("stage", ["dpo", "rm", "kto"])
def test_a_preference_set_whose_every_pair_is_a_tie_is_an_error(tmp_path, stage):
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["chosen"]} for r in PAIRS]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl_bytes(rows))
    with pytest.raises(DataError, match=rf"pairs\.jsonl: every pair \({len(rows)} of {len(rows)} "
                                        r"rows\) has chosen == rejected"):
        load(path, stage)


# --------------------------------------------------------------------------- as users type it


def user_files(root: Path) -> dict[str, list[str]]:
    """Write the bad files of this module in `root`; return the command line of each case."""
    root.mkdir(exist_ok=True)
    (root / "latin1.jsonl").write_bytes(with_bad_byte(PAIRS, 3))
    (root / "excel.csv").write_text(
        "prompt,chosen,rejected\r\n1+1=,2,3\r\n2+2=,,5\r\n", encoding="utf-8-sig")
    (root / "mixed").mkdir()
    (root / "mixed" / "train.jsonl").write_bytes(jsonl_bytes(PAIRS))
    (root / "mixed" / "extra.csv").write_text("prompt,chosen,rejected\n9+1=,10,11\n")
    labels = [{"prompt": f"{i}+1=", "completion": str(i + 1), "label": i % 2 == 0} for i in range(6)]
    labels[3]["label"] = "true"
    (root / "labels.jsonl").write_bytes(jsonl_bytes(labels))
    ties = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["chosen"]} for r in PAIRS]
    (root / "ties.jsonl").write_bytes(jsonl_bytes(ties))
    return {
        "latin1.jsonl: line 4, byte offset": ["dpo", "data.path=latin1.jsonl"],
        # The header is read without the BOM: the row check, not the load, stops it.
        "excel.csv: row 1: field 'chosen': missing or null": ["dpo", "data.path=excel.csv"],
        "mixed: the folder holds data files of more than one format": ["dpo", "data.path=mixed"],
        "labels.jsonl: row 3 (line 4): field 'label': the string 'true'": ["kto",
                                                                          "data.path=labels.jsonl"],
        "ties.jsonl: every pair (6 of 6 rows) has chosen == rejected": ["dpo",
                                                                        "data.path=ties.jsonl"],
    }


@pytest.mark.slow
def test_bad_data_files_as_users_type_them(tmp_path):
    """Each command in a folder of its own (two at once: Hydra names run folders by the second)."""
    cases = user_files(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env["HF_HUB_OFFLINE"] = "1"

    def one(k_args):
        k, (stage, *overrides) = k_args
        cwd = tmp_path / f"user{k}"
        user_files(cwd)
        script = os.path.relpath(REPO / "align" / f"{stage}.py", cwd)
        before = sorted(cwd.rglob("*"))
        proc = subprocess.run([sys.executable, script, "data=local", *overrides],
                              capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
                              check=False)
        return proc, sorted(cwd.rglob("*")) == before

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, enumerate(cases.values())))
    for named, (proc, untouched) in zip(cases, results):
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        assert proc.returncode == 2, (named, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith(f"error: {named}"), (named, lines)
        assert untouched, f"{named}: the failed command left files behind"


def test_a_row_holding_a_unicode_line_separator_is_one_row(tmp_path):
    """JSON allows U+2028 and a form feed unescaped inside a string; a row that holds them is
    still one line of the file, for the rows checked as written as for datasets."""
    rows = [{"prompt": "1+1=", "completion": "2", "label": True},
            {"prompt": "2+2=\u2028\x0c", "completion": "4", "label": False},
            {"prompt": "3+3=", "completion": "7", "label": "false"}]
    path = tmp_path / "unpaired.jsonl"
    path.write_bytes(jsonl_bytes(rows))
    with pytest.raises(DataError, match=r"row 2 \(line 3\): field 'label': the string 'false'"):
        load(path, "kto")
