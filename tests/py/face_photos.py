"""A labelled folder of whole photos with real faces, for the faces stage's tests: skimage's
astronaut (class `astronaut`) and cameraman (class `camera`) pasted at several scales, mirrored and
brightened onto backgrounds of several sizes; one composite with two faces; one photo with no
face (skimage's coffee) and one truncated file, in class `astronaut`.

usage: face_photos.py OUT [PER_CLASS]
"""
import importlib.util
import os
import sys

import numpy as np
from PIL import Image, ImageEnhance

out = sys.argv[1]
per_class = int(sys.argv[2]) if len(sys.argv) > 2 else 6
data = os.path.join(importlib.util.find_spec("skimage").submodule_search_locations[0], "data")
faces = {
    "astronaut": Image.open(os.path.join(data, "astronaut.png")).convert("RGB").crop((120, 10, 330, 240)),
    "camera": Image.open(os.path.join(data, "camera.png")).convert("RGB").crop((150, 60, 320, 260)),
}
rng = np.random.default_rng(1)


def background(w, h):
    yy, xx = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 6)
    bg = np.stack([110 + 40 * np.sin(xx / 31.0 + phase), 120 + 30 * np.cos(yy / 19.0), 100 + 30 * np.sin((xx + yy) / 43.0)], -1)
    return Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))


for cls, face in faces.items():
    os.makedirs(os.path.join(out, cls), exist_ok=True)
    for i in range(per_class):
        w, h = int(rng.integers(320, 480)), int(rng.integers(300, 420))
        scene = background(w, h)
        f = face.resize((int(face.width * (0.6 + 0.08 * i)), int(face.height * (0.6 + 0.08 * i))), Image.BILINEAR)
        if i % 2:
            f = f.transpose(Image.FLIP_LEFT_RIGHT)
        f = ImageEnhance.Brightness(f).enhance(0.85 + 0.05 * i)
        scene.paste(f, (int(rng.integers(0, w - f.width)), int(rng.integers(0, h - f.height))))
        scene.save(os.path.join(out, cls, f"{cls}-{i}.jpg"), quality=92)
# Two faces in one photo: the larger is the astronaut.
scene = background(640, 400)
scene.paste(faces["astronaut"], (20, 60))
scene.paste(faces["camera"].resize((110, 130)), (420, 120))
scene.save(os.path.join(out, "astronaut", "two-faces.jpg"), quality=92)
Image.open(os.path.join(data, "coffee.png")).convert("RGB").save(os.path.join(out, "astronaut", "coffee.jpg"), quality=92)
with open(os.path.join(out, "astronaut", "truncated.jpg"), "wb") as f:
    f.write(open(os.path.join(out, "astronaut", "astronaut-0.jpg"), "rb").read()[:600])
