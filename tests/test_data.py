"""The data layer: every file type, every shape per stage, and one test per malformed case.

Each malformed-row test asserts the message names the file, the row (and line) and the field.
"""

from __future__ import annotations

import gzip
import json

import pytest

datasets = pytest.importorskip("datasets")

from align.data import DataConfig, DataError, detect_format, load_stage_data

datasets.disable_progress_bars()


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write(tmp_path, rows, kind="jsonl", name="train"):
    """Write `rows` as one file (or save_to_disk folder) of the given kind; returns its path."""
    if kind == "jsonl":
        return write_jsonl(tmp_path / f"{name}.jsonl", rows)
    if kind == "json":
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(rows, indent=2))
        return str(path)
    if kind == "jsonl.gz":
        path = tmp_path / f"{name}.jsonl.gz"
        with gzip.open(path, "wt") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)
    if kind == "parquet":
        path = tmp_path / f"{name}.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
        return str(path)
    if kind == "csv":
        path = tmp_path / f"{name}.csv"
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
        return str(path)
    if kind == "disk":
        path = tmp_path / f"{name}_disk"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
        return str(path)
    raise AssertionError(kind)


def load(path, stage, **cfg):
    return load_stage_data(DataConfig(path=path, **cfg), stage)


CONV = [
    {"messages": [user("1+1="), assistant("2")]},
    {"messages": [system("Be brief."), user("2+2="), assistant("4")]},
]
PREF = [
    {"prompt": "1+1=", "chosen": "2", "rejected": "3"},
    {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
]
PROMPTS = [
    {"prompt": [user("1+1=")], "solution": "2", "difficulty": 1},
    {"prompt": [user("2+2=")], "solution": "4", "difficulty": 3},
]


# --------------------------------------------------------------------------- file types


@pytest.mark.parametrize("kind", ["jsonl", "json", "jsonl.gz", "parquet", "disk"])
def test_conversational_sft_loads_from_every_file_type(tmp_path, kind):
    data = load(write(tmp_path, CONV, kind), "sft")
    assert data.format == "messages"
    assert data.train.column_names == ["messages"]
    assert data.train["messages"] == [r["messages"] for r in CONV]
    assert data.eval is None and data.heldout is None


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "disk"])
def test_plain_preference_loads_from_every_file_type(tmp_path, kind):
    data = load(write(tmp_path, PREF, kind), "dpo")
    assert data.format == "preference"
    assert data.train.to_list() == PREF


def test_save_to_disk_dataset_dict_picks_the_split(tmp_path):
    path = str(tmp_path / "dd")
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(PREF),
            "test": datasets.Dataset.from_list(PREF[:1]),
        }
    ).save_to_disk(path)
    data = load(path, "dpo", eval_split="test")
    assert len(data.train) == 2 and len(data.eval) == 1
    assert data.heldout.to_list() == [{"prompt": "1+1=", "solution": "2"}]
    with pytest.raises(
        DataError,
        match=r"has no split 'validation'; available splits: \['test', 'train'\]",
    ):
        load(path, "dpo", split="validation")


def test_folder_of_data_files_uses_file_names_as_splits(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", PREF)
    write_jsonl(folder / "test.jsonl", PREF[:1])
    data = load(str(folder), "dpo", eval_split="test")
    assert (len(data.train), len(data.eval)) == (2, 1)


# --------------------------------------------------------------------------- SFT shapes


def test_sft_prompt_completion_strings_kept(tmp_path):
    rows = [
        {"prompt": "1+1=", "completion": "2"},
        {"prompt": "2+2=", "completion": "4"},
    ]
    data = load(write(tmp_path, rows), "sft", eval_path=write(tmp_path, rows[:1], name="eval"))
    assert data.format == "prompt_completion"
    assert data.train.to_list() == rows
    assert data.heldout.to_list() == [{"prompt": "1+1=", "solution": "2"}]


def test_sft_conversational_prompt_with_string_completion_becomes_conversational(
    tmp_path,
):
    rows = [{"prompt": [user("1+1=")], "completion": "2"}]
    data = load(write(tmp_path, rows), "sft")
    assert data.train.to_list() == [{"prompt": [user("1+1=")], "completion": [assistant("2")]}]


def test_sft_text(tmp_path):
    rows = [{"text": "hello world"}, {"text": "bye"}]
    data = load(write(tmp_path, rows), "sft", eval_path=write(tmp_path, rows, name="eval"))
    assert data.format == "text"
    assert data.train.to_list() == rows
    assert data.heldout is None  # plain text has no prompt/answer boundary


def test_sft_sharegpt_for_a_text_model(tmp_path, caplog):
    """ShareGPT/LLaVA rows convert to `messages`. For a text model, image columns that no text
    refers to are dropped with a warning; text that refers to an image is an error (a text
    model would read the placeholder as words and never see the picture)."""
    rows = [
        {
            "id": "a2",
            "image": "imgs/a2.jpg",
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "user", "value": "Colour?"},
                {"from": "assistant", "value": "Red."},
            ],
        },
    ]
    with caplog.at_level("WARNING"):
        data = load(write(tmp_path, rows), "sft", eval_path=write(tmp_path, rows, name="eval"))
    assert data.format == "sharegpt"
    assert sorted(data.train.column_names) == ["id", "messages"]
    assert data.train[0]["messages"] == [system("Be brief."), user("Colour?"), assistant("Red.")]
    assert data.heldout[0] == {"id": "a2", "prompt": [system("Be brief."), user("Colour?")],
                               "solution": "Red."}
    assert "image" in caplog.text

    rows[0]["conversations"][1]["value"] = "<image>\nColour?"
    with pytest.raises(DataError, match="image"):
        load(write(tmp_path, rows, name="with_placeholder"), "sft")

def test_sft_alpaca_becomes_conversational_prompt_completion(tmp_path):
    rows = [
        {"instruction": "Add the numbers.", "input": "1 2", "output": "3"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ]
    data = load(write(tmp_path, rows, "csv"), "sft")
    assert data.format == "alpaca"
    assert data.train.to_list() == [
        {"prompt": [user("Add the numbers.\n\n1 2")], "completion": [assistant("3")]},
        {"prompt": [user("Say hi.")], "completion": [assistant("hi")]},
    ]


def test_sft_heldout_from_messages_uses_final_assistant_turn(tmp_path):
    rows = [{"messages": [user("a"), assistant("b"), user("c"), assistant("d")]}]
    data = load(write(tmp_path, rows), "sft", eval_path=write(tmp_path, rows, name="eval"))
    assert data.heldout.to_list() == [{"prompt": [user("a"), assistant("b"), user("c")], "solution": "d"}]


# --------------------------------------------------------------------------- DPO shapes


def test_dpo_conversational_explicit_prompt(tmp_path):
    rows = [
        {
            "prompt": [user("1+1=")],
            "chosen": [assistant("2")],
            "rejected": [assistant("3")],
            "id": 7,
        }
    ]
    data = load(write(tmp_path, rows), "dpo")
    assert data.train.to_list() == rows


def test_dpo_conversational_prompt_with_string_answers_wrapped(tmp_path):
    rows = [{"prompt": [user("1+1=")], "chosen": "2", "rejected": "3"}]
    data = load(write(tmp_path, rows), "dpo")
    assert data.train.to_list() == [
        {
            "prompt": [user("1+1=")],
            "chosen": [assistant("2")],
            "rejected": [assistant("3")],
        }
    ]


def test_dpo_implicit_prompt_extracted(tmp_path):
    rows = [
        {
            "chosen": [user("1+1="), assistant("2")],
            "rejected": [user("1+1="), assistant("3")],
        }
    ]
    eval_path = write(tmp_path, rows, name="eval")
    data = load(write(tmp_path, rows), "dpo", eval_path=eval_path)
    expected = {
        "prompt": [user("1+1=")],
        "chosen": [assistant("2")],
        "rejected": [assistant("3")],
    }
    assert data.train.to_list() == [expected]
    assert data.heldout.to_list() == [{"prompt": [user("1+1=")], "solution": "2"}]


def test_dpo_string_prompt_next_to_full_conversations_is_extracted(tmp_path):
    # UltraFeedback-binarized style: a plain prompt column plus full conversations.
    rows = [
        {
            "prompt": "1+1=",
            "chosen": [user("1+1="), assistant("2")],
            "rejected": [user("1+1="), assistant("3")],
        }
    ]
    data = load(write(tmp_path, rows), "dpo")
    assert data.train.to_list() == [
        {
            "prompt": [user("1+1=")],
            "chosen": [assistant("2")],
            "rejected": [assistant("3")],
        }
    ]


def test_dpo_string_prompt_with_assistant_only_answers_becomes_user_turn(tmp_path):
    rows = [{"prompt": "1+1=", "chosen": [assistant("2")], "rejected": [assistant("3")]}]
    data = load(write(tmp_path, rows), "dpo")
    assert data.train[0]["prompt"] == [user("1+1=")]


def test_dpo_heldout_keeps_existing_solution(tmp_path):
    rows = [
        {
            "prompt": [user("1+1=")],
            "chosen": [assistant("It is 2")],
            "rejected": [assistant("3")],
            "solution": "2",
        }
    ]
    data = load(write(tmp_path, rows), "dpo", eval_path=write(tmp_path, rows, name="eval"))
    assert data.heldout.to_list() == [{"prompt": [user("1+1=")], "solution": "2"}]


def test_dpo_some_chosen_equal_rejected_only_warns(tmp_path, caplog):
    rows = [{"prompt": "q", "chosen": "same", "rejected": "same"},
            {"prompt": "r", "chosen": "good", "rejected": "bad"}]
    with caplog.at_level("WARNING", logger="align.data"):
        data = load(write(tmp_path, rows), "dpo")
    assert len(data.train) == 2
    assert "1 rows have chosen == rejected" in caplog.text and "[0]" in caplog.text


# --------------------------------------------------------------------------- GRPO shapes


def test_grpo_prompt_and_extra_columns_preserved(tmp_path):
    data = load(
        write(tmp_path, PROMPTS, "parquet"),
        "grpo",
        eval_path=write(tmp_path, PROMPTS, "parquet", "eval"),
    )
    assert data.format == "prompt"
    assert data.train.to_list() == PROMPTS
    assert data.heldout.to_list() == PROMPTS  # for GRPO the held-out set is the eval split itself


def test_grpo_string_prompt(tmp_path):
    rows = [{"prompt": "1+1=", "answer": "2"}]
    assert load(write(tmp_path, rows), "grpo").train.to_list() == rows


def test_grpo_question_only_suggests_rename(tmp_path):
    path = write(tmp_path, [{"question": "1+1=", "answer": "2"}])
    with pytest.raises(DataError) as err:
        load(path, "grpo")
    msg = str(err.value)
    assert "train.jsonl" in msg and "['answer', 'question']" in msg
    assert "data.columns={question: prompt}" in msg and "data.format" in msg


def test_question_rename_then_loads(tmp_path):
    path = write(tmp_path, [{"question": "1+1=", "answer": "2"}])
    data = load(path, "grpo", columns={"question": "prompt", "answer": "solution"})
    assert data.train.to_list() == [{"prompt": "1+1=", "solution": "2"}]


# --------------------------------------------------------------------------- options


def test_rename_of_missing_column_names_available_columns(tmp_path):
    path = write(tmp_path, PREF)
    with pytest.raises(
        DataError,
        match=r"train.jsonl: data.columns renames 'query'.*\['prompt', 'chosen', 'rejected'\]",
    ):
        load(path, "dpo", columns={"query": "prompt"})


def test_rename_onto_existing_column_is_an_error(tmp_path):
    path = write(tmp_path, [{"question": "a", "prompt": "b"}])
    with pytest.raises(DataError, match="a 'prompt' column already exists"):
        load(path, "grpo", columns={"question": "prompt"})


def test_system_prompt_prepended_unless_present(tmp_path):
    data = load(write(tmp_path, CONV), "sft", system_prompt="Answer.")
    assert data.train["messages"] == [
        [system("Answer."), user("1+1="), assistant("2")],
        [
            system("Be brief."),
            user("2+2="),
            assistant("4"),
        ],  # the row's own system turn wins
    ]
    grpo = load(write(tmp_path, PROMPTS, name="p"), "grpo", system_prompt="Answer.")
    assert grpo.train[0]["prompt"] == [system("Answer."), user("1+1=")]


def test_system_prompt_with_plain_prompts_is_an_error(tmp_path):
    with pytest.raises(
        DataError,
        match=r"train.jsonl: row 0 \(line 1\): field 'prompt': data.system_prompt needs",
    ):
        load(write(tmp_path, PREF), "dpo", system_prompt="Answer.")


def test_eval_fraction_sizes_and_determinism(tmp_path):
    rows = [{"prompt": f"{i}+0=", "solution": str(i)} for i in range(20)]
    path = write(tmp_path, rows)
    a = load(path, "grpo", eval_fraction=0.25, seed=1)
    b = load(path, "grpo", eval_fraction=0.25, seed=1)
    c = load(path, "grpo", eval_fraction=0.25, seed=2)
    assert (len(a.train), len(a.eval)) == (15, 5)
    assert list(a.eval["prompt"]) == list(b.eval["prompt"]) and list(a.train["prompt"]) == list(
        b.train["prompt"]
    )
    assert list(a.eval["prompt"]) != list(c.eval["prompt"])
    assert sorted(list(a.train["prompt"]) + list(a.eval["prompt"])) == sorted(r["prompt"] for r in rows)
    assert a.heldout.to_list() == a.eval.to_list()
    limited = load(path, "grpo", eval_fraction=0.25, seed=1, max_samples=4, max_eval_samples=2)
    assert list(limited.train["prompt"]) == list(a.train["prompt"])[:4]
    assert list(limited.eval["prompt"]) == list(a.eval["prompt"])[:2]


def test_max_samples_keeps_first_rows(tmp_path):
    rows = [{"prompt": f"{i}+0="} for i in range(10)]
    assert load(write(tmp_path, rows), "grpo", max_samples=3).train["prompt"] == [
        "0+0=",
        "1+0=",
        "2+0=",
    ]


def test_max_samples_only_checks_the_rows_kept(tmp_path):
    rows = [{"prompt": "ok"}, {"prompt": "ok"}, {"prompt": ""}]
    assert len(load(write(tmp_path, rows), "grpo", max_samples=2).train) == 2


@pytest.mark.parametrize(
    ("stage", "kind", "columns"),
    [
        ("sft", "sft", ["prompt", "completion"]),
        ("dpo", "preference", ["prompt", "chosen", "rejected", "solution"]),
        ("grpo", "prompt", ["prompt", "solution"]),
    ],
)
def test_synthetic_source_for_each_stage(stage, kind, columns):
    cfg = {"path": "synthetic:arithmetic", "synthetic": {"n_eval": 4, "max_operand": 4}}
    data = load_stage_data(cfg, stage)
    assert data.train.column_names == columns
    assert (len(data.train), len(data.eval)) == (21, 4)  # 5 * 5 pairs, 4 held out
    assert data.heldout.column_names == ["prompt", "solution"]
    row = data.heldout[0]
    a, b = (int(x) for x in row["prompt"][-1]["content"].rstrip("=").split("+"))
    assert row["solution"] == str(a + b)
    assert f"synthetic:arithmetic ({kind}, train)" in data.source


def test_dictconfig_accepted():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"path": "synthetic:arithmetic", "synthetic": {"n_eval": 2, "max_operand": 2}})
    assert len(load_stage_data(cfg, "grpo").eval) == 2


def test_config_errors():
    with pytest.raises(DataError, match="data.format='chatml' is not a format"):
        DataConfig(format="chatml")
    with pytest.raises(DataError, match="eval_fraction=1.5"):
        DataConfig(eval_fraction=1.5)
    with pytest.raises(DataError, match="synthetic.n_eval"):
        DataConfig(eval_fraction=0.1)
    with pytest.raises(DataError, match="unknown data config keys \\['pth'\\]"):
        load_stage_data({"pth": "x"}, "sft")
    with pytest.raises(DataError, match="unknown stage 'ppo'"):
        load_stage_data({}, "ppo")


def test_forced_format(tmp_path):
    rows = [{"messages": [user("a"), assistant("b")], "text": "ignored"}]
    path = write(tmp_path, rows)
    assert load(path, "sft").format == "messages"
    assert load(path, "sft", format="text").train["text"] == ["ignored"]
    with pytest.raises(
        DataError,
        match=r"data.format='alpaca' needs the columns \['instruction', 'output'\]",
    ):
        load(path, "sft", format="alpaca")
    with pytest.raises(DataError, match="data.format='preference' is not a sft format"):
        load(path, "sft", format="preference")


def test_detect_format_rules():
    assert detect_format(["messages", "prompt", "completion"], "sft") == "messages"
    assert detect_format(["conversations", "image"], "sft") == "sharegpt"
    assert detect_format(["prompt", "completion", "text"], "sft") == "prompt_completion"
    assert detect_format(["instruction", "input", "output"], "sft") == "alpaca"
    assert detect_format(["chosen", "rejected"], "dpo") == "preference"
    assert detect_format(["prompt", "x"], "grpo") == "prompt"
    with pytest.raises(DataError, match=r"fit another stage: sft \(messages\)"):
        detect_format(["messages"], "dpo", "f.jsonl")


# --------------------------------------------------------------------------- sources that fail


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope.jsonl: no such file or folder \(data.path\)"):
        load(str(tmp_path / "nope.jsonl"), "sft")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: the dataset is empty"):
        load(str(path), "sft")


def test_empty_csv(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("prompt,completion\n")
    with pytest.raises(DataError, match="empty.csv: the dataset is empty"):
        load(str(path), "sft")


def test_empty_parquet(tmp_path):
    path = str(tmp_path / "empty.parquet")
    datasets.Dataset.from_dict(
        {"prompt": []}, features=datasets.Features({"prompt": datasets.Value("string")})
    ).to_parquet(path)
    with pytest.raises(DataError, match="empty.parquet: the dataset is empty"):
        load(path, "grpo")


def test_jsonl_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b",}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2, column \d+: invalid JSON"):
        load(str(path), "grpo")


def test_json_array_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b"\n]\n')
    with pytest.raises(DataError, match=r"bad.json: line 4, column \d+: invalid JSON"):
        load(str(path), "grpo")


def test_jsonl_row_that_is_not_an_object(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n["b"]\n')
    with pytest.raises(
        DataError,
        match=r"bad.jsonl: row 1 \(line 2\): expected one JSON object per line, got list",
    ):
        load(str(path), "grpo")


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hi")
    with pytest.raises(DataError, match="data.txt: unsupported file type"):
        load(str(path), "sft")


def test_unknown_shape_names_file_columns_and_accepted_shapes(tmp_path):
    path = write(tmp_path, [{"foo": 1, "bar": 2}])
    with pytest.raises(DataError) as err:
        load(path, "sft")
    msg = str(err.value)
    for part in (
        "train.jsonl",
        "['bar', 'foo']",
        "messages",
        "conversations",
        "prompt + completion",
        "instruction + output",
        "text",
        "data.columns",
        "data.format",
    ):
        assert part in msg, part


def test_eval_split_with_single_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="a single file has no splits"):
        load(write(tmp_path, PREF), "dpo", eval_split="test")


def test_hub_failure_is_wrapped(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        DataError,
        match=r"org/data split 'train': not a local file or folder.*ConnectionError: no network",
    ):
        load("org/data", "sft")


def test_loader_error_is_wrapped_with_file_name(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="broken.parquet: could not load the dataset"):
        load(str(path), "grpo")


# --------------------------------------------------------------------------- malformed rows
#
# (stage, rows, row index, field, part of the problem). Bad row last so the message names its index.

OK_MSG = {"messages": [user("q"), assistant("a")]}
OK_PREF = {"prompt": "q", "chosen": "a", "rejected": "b"}
def TOOL_CALL(name, arguments="{}"):  # noqa: N802 (a row builder, read like a constant)
    return {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": name, "arguments": arguments}}]}


TOOL_ANSWER = {"role": "tool", "name": "calc", "content": "6"}

MALFORMED = [
    ("sft", [OK_MSG, {"messages": None}], 1, "messages", "missing or null"),
    ("sft", [OK_MSG, {"other": 1}], 1, "messages", "missing or null"),
    (
        "sft",
        [OK_MSG, {"messages": "hi"}],
        1,
        "messages",
        "expected a list of {role, content} messages, got str",
    ),
    ("sft", [OK_MSG, {"messages": []}], 1, "messages", "empty list of messages"),
    (
        "sft",
        [OK_MSG, {"messages": [{"content": "q"}, assistant("a")]}],
        1,
        "messages",
        "message 0 has no 'role'",
    ),
    (
        "sft",
        [OK_MSG, {"messages": [user("q"), {"role": "assistant"}]}],
        1,
        "messages",
        "message 1 (assistant) has no 'content'",
    ),
    (
        "sft",
        [OK_MSG, {"messages": [{"role": "bot", "content": "q"}, assistant("a")]}],
        1,
        "messages",
        "unknown role 'bot'",
    ),
    (
        "sft",
        [OK_MSG, {"messages": [user("q"), assistant("")]}],
        1,
        "messages",
        "message 1 (assistant) has empty content",
    ),
    (
        "sft",
        [OK_MSG, {"messages": [user("q"), 3]}],
        1,
        "messages",
        "message 1: expected a {role, content} object, got int",
    ),
    (
        "sft",
        [OK_MSG, OK_MSG, {"messages": [user("q")]}],
        2,
        "messages",
        "no assistant turn",
    ),
    (
        "sft",
        [{"prompt": "q", "completion": "a"}, {"prompt": "", "completion": "a"}],
        1,
        "prompt",
        "empty string",
    ),
    (
        "sft",
        [{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": None}],
        1,
        "completion",
        "missing or null",
    ),
    (
        "sft",
        [{"prompt": [user("q"), assistant("a")], "completion": "b"}],
        0,
        "prompt",
        "ends with an assistant turn",
    ),
    (
        "sft",
        [{"prompt": "q", "completion": [assistant("a")]}],
        0,
        "completion",
        "'prompt' is a string",
    ),
    (
        "sft",
        [
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "bot", "value": "a"},
                ]
            }
        ],
        0,
        "conversations",
        "unknown 'from' value 'bot'",
    ),
    (
        "sft",
        [{"conversations": [{"from": "human", "value": "q"}]}],
        0,
        "conversations",
        "no gpt/assistant turn",
    ),
    ("sft", [{"instruction": "", "output": "a"}], 0, "instruction", "empty string"),
    ("sft", [{"text": "a"}, {"text": 5}], 1, "text", "expected a string, got int"),
    (
        "dpo",
        [OK_PREF, OK_PREF, OK_PREF, {"prompt": "q", "chosen": 1, "rejected": "b"}],
        3,
        "chosen",
        "expected a string or a list of {role, content} messages, got int",
    ),
    (
        "dpo",
        [OK_PREF, {"prompt": "q", "chosen": "a", "rejected": ""}],
        1,
        "rejected",
        "empty string",
    ),
    (
        "dpo",
        [OK_PREF, {"prompt": None, "chosen": "a", "rejected": "b"}],
        1,
        "prompt",
        "missing or null",
    ),
    (
        "dpo",
        [{"prompt": "q", "chosen": "a", "rejected": [assistant("b")]}],
        0,
        "rejected",
        "both be strings",
    ),
    (
        "dpo",
        [
            {
                "prompt": [user("q"), assistant("x")],
                "chosen": [assistant("a")],
                "rejected": [assistant("b")],
            }
        ],
        0,
        "prompt",
        "ends with an assistant turn",
    ),
    ("dpo", [{"chosen": "abc", "rejected": "xyz"}], 0, "chosen", "share no start"),
    ("grpo", [{"prompt": "q"}, {"prompt": ""}], 1, "prompt", "empty string"),
    ("grpo", [{"prompt": "q"}, {"prompt": 7}], 1, "prompt", "got int"),
    (
        "grpo",
        [{"prompt": [user("q"), assistant("a")]}],
        0,
        "prompt",
        "ends with an assistant turn",
    ),
    # tool-use traces: each call's shape, and every tool turn answers a call
    ("sft", [OK_MSG, {"messages": [user("q"), TOOL_CALL(None), TOOL_ANSWER, assistant("6")]}],
     1, "messages", "tool call 0 has no function name"),
    ("sft", [{"messages": [user("q"), TOOL_CALL("calc", "{not json"), TOOL_ANSWER,
                           assistant("6")]}], 0, "messages", "arguments are not valid JSON"),
    ("sft", [{"messages": [user("q"), TOOL_CALL("calc", [1, 2]), TOOL_ANSWER,
                           assistant("6")]}], 0, "messages", "arguments must be an object"),
    ("sft", [{"messages": [user("q"), {"role": "assistant", "content": "",
                                       "tool_calls": [{"name": "calc"}]}], "x": 1}],
     0, "messages", 'expected {"type": "function"'),
    ("sft", [{"messages": [user("q"), TOOL_ANSWER, assistant("6")]}], 0, "messages",
     "answers no tool call"),
    ("sft", [{"messages": [{"role": "user", "content": "q", "tool_calls": [
        {"type": "function", "function": {"name": "calc", "arguments": {}}}]},
        assistant("6")]}], 0, "messages", "only assistant turns call tools"),
]


@pytest.mark.parametrize(("stage", "rows", "index", "field", "problem"), MALFORMED)
def test_malformed_row_jsonl_names_file_row_line_and_field(tmp_path, stage, rows, index, field, problem):
    path = write(tmp_path, rows)
    with pytest.raises(DataError) as err:
        load(path, stage)
    msg = str(err.value)
    assert f"train.jsonl: row {index} (line {index + 1}): field '{field}': " in msg, msg
    assert problem in msg, msg


PARQUET_MALFORMED = [  # cases whose columns arrow can store (one type per column)
    (
        "sft",
        [OK_MSG, {"messages": [{"role": "bot", "content": "q"}, assistant("a")]}],
        1,
        "messages",
        "unknown role",
    ),
    (
        "sft",
        [OK_MSG, {"messages": [user("q"), {"role": "assistant", "content": None}]}],
        1,
        "messages",
        "no 'content'",
    ),
    (
        "sft",
        [OK_MSG, OK_MSG, {"messages": [user("q")]}],
        2,
        "messages",
        "no assistant turn",
    ),
    (
        "dpo",
        [OK_PREF, {"prompt": "q", "chosen": "a", "rejected": None}],
        1,
        "rejected",
        "missing or null",
    ),
    ("grpo", [{"prompt": "q"}, {"prompt": ""}], 1, "prompt", "empty string"),
]


@pytest.mark.parametrize(("stage", "rows", "index", "field", "problem"), PARQUET_MALFORMED)
def test_malformed_row_from_parquet_names_file_row_and_field(tmp_path, stage, rows, index, field, problem):
    path = write(tmp_path, rows, "parquet")
    with pytest.raises(DataError) as err:
        load(path, stage)
    msg = str(err.value)
    assert f"train.parquet: row {index}: field '{field}': " in msg, msg
    assert problem in msg, msg


def test_csv_empty_cell_names_row_and_field(tmp_path):
    path = write(
        tmp_path,
        [{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": ""}],
        "csv",
    )
    with pytest.raises(DataError, match=r"train.csv: row 1: field 'completion': missing or null"):
        load(path, "sft")


def test_jsonl_line_numbers_skip_blank_lines(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"prompt": "a"}\n\n\n{"prompt": ""}\n')
    with pytest.raises(DataError, match=r"gaps.jsonl: row 1 \(line 4\): field 'prompt'"):
        load(str(path), "grpo")


def test_many_bad_rows_reported_together(tmp_path):
    rows = [{"prompt": ""} for _ in range(25)]
    with pytest.raises(DataError) as err:
        load(write(tmp_path, rows), "grpo")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path}/train.jsonl: 25 malformed rows:")
    assert "row 9 (line 10)" in msg and "row 10 (line 11)" not in msg and "and 15 more" in msg


def test_eval_file_rows_are_checked_too(tmp_path):
    eval_path = write(tmp_path, [{"prompt": "q"}, {"prompt": None}], name="eval")
    with pytest.raises(DataError, match=r"eval.jsonl: row 1 \(line 2\): field 'prompt'"):
        load(write(tmp_path, [{"prompt": "q"}]), "grpo", eval_path=eval_path)


def test_split_of_a_single_file_is_an_error(tmp_path):
    with pytest.raises(
        DataError,
        match=r"train.jsonl: a single file is one split, so data.split='test'",
    ):
        load(write(tmp_path, PREF), "dpo", split="test")


def test_eval_split_with_synthetic_is_an_error():
    with pytest.raises(DataError, match="data.eval_split does not apply to synthetic data"):
        DataConfig(eval_split="test")


def test_sharegpt_with_role_content_messages_suggests_rename(tmp_path):
    path = write(tmp_path, [{"conversations": [user("q"), assistant("a")]}])
    with pytest.raises(
        DataError,
        match=r"row 0 \(line 1\): field 'conversations'.*data.columns=\{conversations: messages\}",
    ):
        load(path, "sft")
    assert load(path, "sft", columns={"conversations": "messages"}).format == "messages"


def test_assistant_turn_with_only_tool_calls_is_valid(tmp_path):
    call = {
        "type": "function",
        "function": {"name": "add", "arguments": {"a": 1, "b": 1}},
    }
    rows = [
        {
            "messages": [
                user("1+1?"),
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "content": "2"},
                assistant("2"),
            ]
        }
    ]
    assert len(load(write(tmp_path, rows), "sft").train) == 1


def test_importing_the_module_does_not_import_datasets():
    import subprocess
    import sys

    code = "import sys, align.data; assert 'datasets' not in sys.modules and 'trl' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tool_use_traces_load_and_keep_their_tools_column(tmp_path):
    """An assistant turn that only calls a tool (empty content), the tool's turn, the answer, and
    a `tools` column of schemas: accepted as they are, JSON-string arguments too."""
    rows = [{"messages": [user("2*3="), TOOL_CALL("calc", '{"expression": "2*3"}'), TOOL_ANSWER,
                          assistant("6")], "tools": '[{"type": "function", "function": '
                                                    '{"name": "calc"}}]'}] * 3
    data = load(write(tmp_path, rows), "sft")
    assert set(data.train.column_names) == {"messages", "tools"}
    assert data.train[0]["messages"][2]["content"] == "6"
