"""An annotated folder of whole photos (Pascal VOC), for the deteval stage's tests: skimage's
astronaut and cameraman faces pasted at several scales onto backgrounds, their boxes written as
`astronaut_face` / `camera_face` objects; a photo with two faces (one marked difficult in a third
photo), a small face, a photo without faces; and four annotation files the reader must reject
(a missing photo, an unknown class, a box outside the photo, a file that is not XML).

usage: annotated_scenes.py OUT
"""
import importlib.util
import os
import sys

import numpy as np
from PIL import Image

out = sys.argv[1]
data = os.path.join(importlib.util.find_spec("skimage").submodule_search_locations[0], "data")
faces = {
    "astronaut_face": Image.open(os.path.join(data, "astronaut.png")).convert("RGB").crop((120, 10, 330, 240)),
    "camera_face": Image.open(os.path.join(data, "camera.png")).convert("RGB").crop((150, 60, 320, 260)),
}
# The face inside each pasted picture (x1, y1, x2, y2 in the picture's pixels; the pictures also
# show hair, shoulders and background), read off the detectors' boxes and rounded.
face_box = {"astronaut_face": (62, 52, 158, 164), "camera_face": (52, 48, 112, 128)}
rng = np.random.default_rng(3)
os.makedirs(os.path.join(out, "images"), exist_ok=True)
os.makedirs(os.path.join(out, "annotations"), exist_ok=True)


def background(w, h):
    yy, xx = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 6)
    bg = np.stack([110 + 40 * np.sin(xx / 31.0 + phase), 120 + 30 * np.cos(yy / 19.0), 100 + 30 * np.sin((xx + yy) / 43.0)], -1)
    return Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))


def voc(stem, file, w, h, objects):
    xml = [f"<annotation><filename>{file}</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"]
    for name, (x1, y1, x2, y2), difficult in objects:
        xml.append(f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox><xmin>{x1}</xmin>"
                   f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    xml.append("</annotation>")
    with open(os.path.join(out, "annotations", stem + ".xml"), "w") as f:
        f.write("".join(xml))


def scene(stem, w, h, placed, difficult=()):
    """placed: (class, scale, x, y); returns nothing, writes the photo and its annotation."""
    img = background(w, h)
    objects = []
    for i, (cls, scale, x, y) in enumerate(placed):
        f = faces[cls]
        x1, y1, x2, y2 = face_box[cls]
        if i % 2:
            f = f.transpose(Image.FLIP_LEFT_RIGHT)
            x1, x2 = f.width - x2, f.width - x1
        f = f.resize((int(f.width * scale), int(f.height * scale)), Image.BILINEAR)
        img.paste(f, (x, y))
        box = (round(x + x1 * scale), round(y + y1 * scale), round(x + x2 * scale), round(y + y2 * scale))
        objects.append((cls, box, i in difficult))
    img.save(os.path.join(out, "images", stem + ".jpg"), quality=92)
    voc(stem, stem + ".jpg", w, h, objects)


for i in range(8):
    cls = "astronaut_face" if i % 2 == 0 else "camera_face"
    w, h = int(rng.integers(360, 520)), int(rng.integers(320, 440))
    s = 0.5 + 0.07 * i
    fw, fh = int(faces[cls].width * s), int(faces[cls].height * s)
    scene(f"single-{i}", w, h, [(cls, s, int(rng.integers(0, w - fw)), int(rng.integers(0, h - fh)))])
scene("pair", 700, 420, [("astronaut_face", 1.0, 20, 60), ("camera_face", 0.65, 420, 120)])
scene("pair-difficult", 700, 420, [("camera_face", 0.9, 30, 80), ("astronaut_face", 0.6, 430, 100)], difficult=(1,))
scene("small", 400, 320, [("astronaut_face", 0.25, 180, 140), ("camera_face", 0.8, 10, 20)])
Image.open(os.path.join(data, "coffee.png")).convert("RGB").save(os.path.join(out, "images", "coffee.jpg"), quality=92)
voc("coffee", "coffee.jpg", 600, 400, [])
# Rejected: a photo that is not there, a class the map does not know, a box far outside its photo,
# and a file that is not XML.
voc("gone", "gone.jpg", 400, 300, [("astronaut_face", (10, 10, 100, 100), False)])
Image.open(os.path.join(out, "images", "single-0.jpg")).save(os.path.join(out, "images", "dog.jpg"))
w, h = Image.open(os.path.join(out, "images", "dog.jpg")).size
voc("dog", "dog.jpg", w, h, [("dog", (10, 10, 100, 100), False)])
Image.open(os.path.join(out, "images", "single-1.jpg")).save(os.path.join(out, "images", "outside.jpg"))
w, h = Image.open(os.path.join(out, "images", "outside.jpg")).size
voc("outside", "outside.jpg", w, h, [("camera_face", (10, 10, w + 50, 100), False)])
with open(os.path.join(out, "annotations", "broken.xml"), "w") as f:
    f.write("<annotation><filename>single-2.jpg</filename")
