"""Writes the preference-set fixtures of tests/test_train.py (run once; the outputs are committed).

rlaif_v.parquet: RLAIF-V's columns (``image`` as datasets' Image feature, ``question``, ``chosen``,
``rejected``, ``origin_dataset``, ``origin_split``, ``idx``, ``image_path``, ``logps``) over five world
scenes; record 3's image bytes are not an image and record 4's chosen answer is empty (both broken).
rlhf_v.json: RLHF-V's layout (a ``text`` column holding question / chosen / rejected as a JSON string,
``image`` a relative path); record 2's text is not JSON and record 3's image file does not exist.
bad.parquet, bad.json: not parquet / not JSON.

    python tests/data/train/make_fixtures.py
"""
import io
import json
from pathlib import Path

import datasets

from adapt.world import make_split

HERE = Path(__file__).resolve().parent


def main():
    scenes = make_split("train", 5, seed=900)
    (HERE / "images").mkdir(exist_ok=True)
    rows = {k: [] for k in ("image", "question", "chosen", "rejected", "origin_dataset", "origin_split", "idx",
                            "image_path", "logps")}
    for i, s in enumerate(scenes):
        buf = io.BytesIO()
        s.image().save(buf, format="PNG")
        s.image().save(HERE / "images" / f"scene-{i}.png")
        truth = s.description()
        halluc = truth.rstrip(".") + " and a tiny red moon at the bottom."
        rows["image"].append({"bytes": buf.getvalue() if i != 3 else b"not an image", "path": None})
        rows["question"].append("describe the image in detail.")
        rows["chosen"].append(truth if i != 4 else "  ")
        rows["rejected"].append(halluc)
        rows["origin_dataset"].append("world")
        rows["origin_split"].append("train")
        rows["idx"].append(i)
        rows["image_path"].append(f"images/scene-{i}.png")
        rows["logps"].append(None)
    feats = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                               "chosen": datasets.Value("string"), "rejected": datasets.Value("string"),
                               "origin_dataset": datasets.Value("string"), "origin_split": datasets.Value("string"),
                               "idx": datasets.Value("int64"), "image_path": datasets.Value("string"),
                               "logps": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(HERE / "rlaif_v.parquet"))
    rlhf = []
    for i, s in enumerate(scenes[:4]):
        text = json.dumps({"question": "what do you see in this image?", "chosen": s.description(),
                           "rejected": s.description().rstrip(".") + " and a small blue ring on the left."})
        rlhf.append({"image": f"images/scene-{i}.png" if i != 3 else "images/missing.png",
                     "text": text if i != 2 else "{not json", "origin_dataset": "world", "idx": i})
    (HERE / "rlhf_v.json").write_text(json.dumps(rlhf, indent=1))
    (HERE / "bad.parquet").write_bytes(b"PAR1 this is not parquet at all")
    (HERE / "bad.json").write_text('[{"text": "x", ')


if __name__ == "__main__":
    main()
