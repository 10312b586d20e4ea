"""Pascal VOC XML and YOLO txt annotations → COCO JSON (``resnet-tasks convert voc-to-coco|yolo-to-coco``).

Both write the same COCO file the detection task reads, so any of the three formats trains.

- VOC: one ``<annotation>`` XML per image (``filename``, ``size``, ``object/name``, ``object/bndbox``
  in 1-based pixels); ``difficult`` objects become ``iscrowd`` regions, which COCO evaluation ignores
  as VOC's does. Categories: ``--category`` names in that order, else the names found, sorted.
- YOLO: one ``<image stem>.txt`` per image, a line ``class cx cy w h`` (0…1 of the image size) per
  object, or ``class x1 y1 x2 y2 …`` (a polygon, YOLO's segmentation format: the COCO annotation
  gets it as its mask). Class names come from ``--classes`` (``classes.txt`` or a YOLO
  ``data.yaml`` with ``names``) or ``--category``; an image without a txt is a negative.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from PIL import Image

from tasks.data.io import DataError, list_images


def _write(out: Path, images: list[dict], annotations: list[dict], names: list[str]) -> dict[str, Any]:
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return {"images": len(images), "annotations": len(annotations),
            "categories": {c["name"]: sum(a["category_id"] == c["id"] for a in annotations) for c in categories},
            "empty_images": len(images) - len({a["image_id"] for a in annotations}), "out": str(out)}


def _text(node: ET.Element, tag: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise DataError(f"{path}: <{node.tag}> has no <{tag}>; is it a Pascal VOC annotation?")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    value = _text(node, tag, path)
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{path}: <{tag}> must be a number, got {value!r}") from None


def voc_to_coco(annotations_dir: Path, out: Path, category_names: list[str] | None = None) -> dict[str, Any]:
    """Write a COCO JSON for the VOC XML files in ``annotations_dir``; return counts.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "a.xml").write_text("<annotation><filename>a.jpg</filename><size><width>64</width>"
        ...     "<height>48</height></size><object><name>dog</name><bndbox><xmin>11</xmin><ymin>6</ymin>"
        ...     "<xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>")
        >>> voc_to_coco(root, root / "train.json")["categories"]
        {'dog': 1}
        >>> json.loads((root / "train.json").read_text())["annotations"][0]["bbox"]
        [10.0, 5.0, 20.0, 35.0]
    """
    folder = Path(annotations_dir)
    files = sorted(folder.glob("*.xml")) if folder.is_dir() else []
    if not files:
        raise DataError(f"no VOC .xml files in {folder} (VOC keeps them in Annotations/)")
    parsed = []
    for path in files:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            raise DataError(f"{path} is not valid XML: {e}") from None
        size = root.find("size")
        if size is None:
            raise DataError(f"{path}: no <size>; VOC annotations give the image's width and height")
        objects = [(_text(o, "name", path), o.find("difficult"), o) for o in root.findall("object")]
        parsed.append((path, _text(root, "filename", path), int(_number(size, "width", path)),
                       int(_number(size, "height", path)), objects))
    found = sorted({name for *_, objs in parsed for name, _, _ in objs})
    names = list(category_names) if category_names else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DataError(f"{folder}: objects of {unknown} are not among --category {names}; add them")
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    images, anns = [], []
    for image_id, (path, file_name, w, h, objects) in enumerate(parsed, start=1):
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for name, difficult, obj in objects:
            box = obj.find("bndbox")
            if box is None:
                raise DataError(f"{path}: object {name!r} has no <bndbox>")
            # VOC pixels are 1-based and inclusive (detectron2's reader): x1 - 1, x2 stays.
            x1, y1 = _number(box, "xmin", path) - 1, _number(box, "ymin", path) - 1
            x2, y2 = _number(box, "xmax", path), _number(box, "ymax", path)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat_id[name],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": int(difficult is not None and (difficult.text or "0").strip() == "1")})
    return _write(out, images, anns, names)


def read_class_names(path: Path) -> list[str]:
    """``classes.txt`` (one name per line) or a YOLO ``data.yaml`` (``names``: a list or {index: name})."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class names file {path} not found")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        names = (yaml.safe_load(path.read_text()) or {}).get("names")
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if not isinstance(names, list) or not names:
            raise DataError(f"{path} has no 'names' list; YOLO data.yaml lists the classes under names:")
        return [str(n) for n in names]
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{path} lists no class names (one per line)")
    return names


def yolo_to_coco(labels_dir: Path, images_dir: Path, out: Path, names: list[str]) -> dict[str, Any]:
    """Write a COCO JSON for the YOLO txt labels of the images in ``images_dir``; return counts.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (100, 50)).save(root / "a.png")
        >>> _ = (root / "a.txt").write_text("1 0.5 0.5 0.2 0.4\\n")
        >>> yolo_to_coco(root, root, root / "train.json", ["cat", "dog"])["categories"]
        {'cat': 0, 'dog': 1}
        >>> json.loads((root / "train.json").read_text())["annotations"][0]["bbox"]
        [40.0, 15.0, 20.0, 20.0]
    """
    labels_dir, images_dir = Path(labels_dir), Path(images_dir)
    for d in (labels_dir, images_dir):
        if not d.is_dir():
            raise DataError(f"folder {d} not found")
    if not names:
        raise DataError("YOLO labels hold class indices: give the names (--classes FILE or --category NAME …)")
    images, anns = [], []
    for image_id, image_path in enumerate(list_images(images_dir), start=1):
        with Image.open(image_path) as im:
            w, h = im.size
        images.append({"id": image_id, "file_name": image_path.name, "width": w, "height": h})
        txt = labels_dir / f"{image_path.stem}.txt"
        if not txt.is_file():
            continue  # YOLO's convention for an image without objects
        for n, line in enumerate(txt.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            anns.append({"id": len(anns) + 1, "image_id": image_id, **_yolo_object(line, txt, n, w, h, names)})
    if not images:
        raise DataError(f"no images in {images_dir}")
    return _write(out, images, anns, names)


def _yolo_object(line: str, txt: Path, n: int, w: int, h: int, names: list[str]) -> dict[str, Any]:
    parts = line.split()
    try:
        cls, values = int(parts[0]), [float(v) for v in parts[1:]]
    except (ValueError, IndexError):
        raise DataError(f"{txt} line {n}: expected 'class cx cy w h' (numbers), got {line!r}") from None
    if not 0 <= cls < len(names):
        raise DataError(f"{txt} line {n}: class {cls} but {len(names)} names are given ({', '.join(names)})")
    if len(values) == 4:
        cx, cy, bw, bh = values[0] * w, values[1] * h, values[2] * w, values[3] * h
        x1, y1 = cx - bw / 2, cy - bh / 2
        return {"category_id": cls + 1, "bbox": [round(x1, 4), round(y1, 4), round(bw, 4), round(bh, 4)],
                "area": bw * bh, "iscrowd": 0}
    if len(values) >= 6 and len(values) % 2 == 0:  # polygon x1 y1 x2 y2 …
        xs, ys = [v * w for v in values[0::2]], [v * h for v in values[1::2]]
        poly = [round(c, 2) for xy in zip(xs, ys) for c in xy]
        from pycocotools import mask as mask_utils

        rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
        return {"category_id": cls + 1, "segmentation": [poly], "area": float(mask_utils.area(rle)),
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "iscrowd": 0}
    raise DataError(f"{txt} line {n}: expected 4 box values or an even number ≥ 6 of polygon values after "
                    f"the class, got {len(values)}")
