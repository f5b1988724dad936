"""Write N JPEG images (96x128, 10 classes of coloured shapes on noise) as OUT/<class>/<i>.jpg,
a `dataset.kind = "folder"` dataset for the streaming benchmarks. Deterministic; needs Pillow.

    python bench/make_jpegs.py OUT N
"""
import os
import random
import sys

from PIL import Image, ImageDraw

out, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
classes = 10
noise = [bytes(rng.getrandbits(8) for _ in range(96 * 128 * 3)) for _ in range(8)]
for c in range(classes):
    os.makedirs(os.path.join(out, f"class{c:02d}"), exist_ok=True)
for i in range(n):
    c = i % classes
    img = Image.frombytes("RGB", (128, 96), noise[i % len(noise)])
    d = ImageDraw.Draw(img)
    x, y = rng.randrange(0, 64), rng.randrange(0, 40)
    colour = ((c * 70) % 256, (c * 140) % 256, (c * 30 + 90) % 256)
    if c % 2:
        d.ellipse([x, y, x + 50, y + 50], fill=colour)
    else:
        d.rectangle([x, y, x + 50, y + 50], fill=colour)
    img.save(os.path.join(out, f"class{c:02d}", f"{i:06d}.jpg"), quality=85)
