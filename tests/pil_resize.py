"""Reference for tests/camera/preprocess_pil.rs: resize PNGs with PIL exactly as torchvision Resize(360) does.

usage: pil_resize.py SHORT_SIDE IN.png OUT.png [IN.png OUT.png ...]
"""
import sys

from PIL import Image


def main() -> None:
    short = int(sys.argv[1])
    pairs = sys.argv[2:]
    for src, dst in zip(pairs[::2], pairs[1::2]):
        img = Image.open(src).convert("RGB")
        w, h = img.size
        # torchvision.transforms.functional.resize with an int: the short side becomes `short`, the long side int(short * long / short_side).
        if w <= h:
            size = (short, int(short * h / w))
        else:
            size = (int(short * w / h), short)
        img.resize(size, Image.BILINEAR).save(dst)


if __name__ == "__main__":
    main()
