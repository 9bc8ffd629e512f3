"""Vision-language data: the LLaVA / Qwen2-VL-Finetune format, media checks and text-model rules."""

import json

import pytest

pytest.importorskip("PIL", reason="the `vision` extra")
from PIL import Image  # noqa: E402

from align.data import DataError, load_stage_data  # noqa: E402


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(images / "red.png")
    Image.new("RGB", (30, 40), (0, 0, 255)).save(images / "blue.jpg")
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    return tmp_path


def write(path, rows):
    path.write_text(json.dumps(rows))
    return str(path)


def conv(text, answer="ok"):
    return [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]


def test_sharegpt_images_in_placeholder_order_relative_and_absolute(folder):
    rows = [
        {"id": "a", "image": ["red.png", str(folder / "imgs" / "blue.jpg")],
         "conversations": conv("<image>\nand <image>\nSame colour?", "No.")},
        {"id": "b", "image": "blue.jpg", "conversations": conv("What colour? <image>", "blue")},
        {"id": "c", "conversations": conv("No picture here.", "fine")},
    ]
    path = write(folder / "train.json", rows)
    data = load_stage_data({"path": path, "image_folder": str(folder / "imgs")}, "sft", vision=True)
    first = data.train[0]
    assert first["id"] == "a" and "image" not in data.train.column_names
    assert [p["type"] for p in first["messages"][0]["content"]] == ["image", "text", "image", "text"]
    assert first["messages"][0]["content"][3]["text"] == "\nSame colour?"
    assert [im.size for im in first["images"]] == [(40, 30), (30, 40)]
    second = data.train[1]
    assert [p["type"] for p in second["messages"][0]["content"]] == ["text", "image"]
    assert data.train[2]["images"] == []


def test_relative_paths_default_to_the_data_file_folder(folder):
    path = write(folder / "imgs" / "train.json",
                 [{"id": "x", "image": "red.png", "conversations": conv("<image>?")}])
    data = load_stage_data({"path": path}, "sft", vision=True)
    assert data.train[0]["images"][0].size == (40, 30)


@pytest.mark.parametrize("row,expected", [
    ({"id": "m1", "image": "nope.png", "conversations": conv("<image>?")},
     "row 0 (id 'm1'): field 'image': {imgs}/nope.png: no such image file"),
    ({"id": "m2", "image": "broken.png", "conversations": conv("<image>?")},
     "row 0 (id 'm2'): field 'image': {imgs}/broken.png: unreadable image"),
    ({"id": "m3", "image": ["red.png", "blue.jpg"], "conversations": conv("<image> only one")},
     "row 0 (id 'm3'): field 'image': 1 <image> placeholder(s) in the text but 2 image(s)"),
    ({"id": "m4", "conversations": conv("<image> but no image")},
     "row 0 (id 'm4'): field 'image': 1 <image> placeholder(s) in the text but 0 image(s)"),
    ({"id": "m5", "video": "clip.mp4", "conversations": conv("no placeholder")},
     "row 0 (id 'm5'): field 'video': 0 <video> placeholder(s) in the text but 1 video(s)"),
])
def test_bad_media_fail_naming_row_id_and_path(folder, row, expected):
    pytest.importorskip("av", reason="the `vision` extra")
    path = write(folder / "bad.json", [row])
    with pytest.raises(DataError) as err:
        load_stage_data({"path": path, "image_folder": str(folder / "imgs")}, "sft", vision=True)
    assert expected.format(imgs=folder / "imgs") in str(err.value)
    assert str(err.value).startswith(path)


def test_dpo_and_grpo_rows_with_images(folder):
    pairs = [{"id": "p", "image": "red.png", "prompt": "<image>\nColour?", "chosen": "red",
              "rejected": "blue"}]
    dpo = load_stage_data({"path": write(folder / "imgs" / "pairs.json", pairs)}, "dpo", vision=True)
    row = dpo.train[0]
    assert [p["type"] for p in row["prompt"][0]["content"]] == ["image", "text"]
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    assert len(row["images"]) == 1
    prompts = [{"id": "g", "image": "blue.jpg", "prompt": "<image>\nColour?", "solution": "blue",
                "difficulty": 2}]
    grpo = load_stage_data({"path": write(folder / "imgs" / "prompts.json", prompts)}, "grpo",
                           vision=True)
    assert grpo.train[0]["solution"] == "blue" and grpo.train[0]["difficulty"] == 2
    assert grpo.train[0]["images"][0].size == (30, 40)
    bad = [{**pairs[0], "chosen": "<image> red"}]
    with pytest.raises(DataError, match="field 'chosen': has an <image>/<video> placeholder"):
        load_stage_data({"path": write(folder / "imgs" / "bad.json", bad)}, "dpo", vision=True)


def test_text_model_drops_unused_media_and_refuses_placeholders(folder, caplog):
    unused = [{"id": "t", "image": "red.png", "conversations": conv("Hello", "hi")}]
    data = load_stage_data({"path": write(folder / "imgs" / "u.json", unused)}, "sft")
    assert "image" not in data.train.column_names and "images" not in data.train.column_names
    assert "dropping the ['image'] column" in caplog.text
    used = [{"id": "t", "image": "red.png", "conversations": conv("<image> What?", "red")}]
    with pytest.raises(DataError, match=r"row 0 \(id 't'\): the text refers to images.*model=tiny_vlm"):
        load_stage_data({"path": write(folder / "imgs" / "v.json", used)}, "sft")
    with pytest.raises(DataError, match="text model"):
        load_stage_data({"path": "synthetic:shapes"}, "grpo")


def make_video(path, seconds=3, fps=10):
    av = pytest.importorskip("av", reason="the `vision` extra")
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(seconds * fps):
            frame = np.full((32, 32, 3), (i * 8) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_video_frames_sampled_at_rate_and_capped(folder):
    make_video(folder / "imgs" / "clip.mp4")
    (folder / "imgs" / "bad.mp4").write_bytes(b"not a video")
    rows = [{"id": "v", "video": "clip.mp4", "image": "red.png",
             "conversations": conv("<image> then <video> What changed?", "brighter")}]
    path = write(folder / "imgs" / "v.json", rows)
    data = load_stage_data({"path": path, "video_fps": 1.0}, "sft", vision=True)
    parts = [p["type"] for p in data.train[0]["messages"][0]["content"]]
    assert parts == ["image", "text"] + ["image"] * 3 + ["text"]  # 3 s at 1 frame/s
    assert [im.size for im in data.train[0]["images"]] == [(40, 30)] + [(32, 32)] * 3
    capped = load_stage_data({"path": path, "video_fps": 10.0, "video_max_frames": 4}, "sft", vision=True)
    assert len(capped.train[0]["images"]) == 1 + 4
    bad = write(folder / "imgs" / "b.json", [{**rows[0], "video": "bad.mp4"}])
    with pytest.raises(DataError, match=r"row 0 \(id 'v'\): field 'video': .*bad.mp4: unreadable video"):
        load_stage_data({"path": bad}, "sft", vision=True)


def test_synthetic_shapes_answers_match_the_pictures():
    from align.data.synthetic import SHAPE_COLOURS, build_synthetic

    rows = build_synthetic("shapes", "prompt", "eval", n_eval=24)
    train = build_synthetic("shapes", "prompt", "train", n_eval=24)
    assert len(rows) == 24 and len(train) == 640 - 24
    import io

    for row in rows:
        image = Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB")
        colours = {c for c in image.getdata() if c != (255, 255, 255)}
        question = row["prompt"][0]["content"][1]["text"]
        if "colour" in question:
            assert SHAPE_COLOURS[row["solution"]] in colours
        else:
            assert row["solution"] in "1234"
    again = build_synthetic("shapes", "prompt", "eval", n_eval=24)
    assert again[0]["images"] == rows[0]["images"]  # deterministic
