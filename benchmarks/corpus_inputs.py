"""Realistic inputs for the corpus models, made here from seeds: rendered text, photographs, speech-like audio, files.

Each generator returns (inputs, truth): a dict of arrays named after the model's inputs, preprocessed the way the
shipping package preprocesses them, and what is known about them (the rendered text, the orientation), used to
check that the original model reads them as intended. Pillow is needed for text and photographs (the `bench` extra).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

import corpus
from corpus_fetch import extract, fetch_wheel

WORDS = ("invoice total amount date paid order number street city station river mountain library number "
         "account balance credit open closed morning evening report summary page chapter figure table "
         "Monday October 2024 No. 17 Tel: +44 (0) 12.50 EUR 3/4 item price qty VAT free express delivery "
         "North South Avenue Road Hotel Museum Exit Platform 9 Gate B12 Room 204 Level").split()
CAPTCHA_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
         "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf")


def _font(rng: np.random.Generator, size: int):
    from PIL import ImageFont
    present = [f for f in FONTS if Path(f).exists()]
    if present:
        return ImageFont.truetype(present[rng.integers(len(present))], size)
    return ImageFont.load_default(size)


def _phrase(rng: np.random.Generator, words: int) -> str:
    return " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=words))


def _line_image(rng: np.random.Generator, text: str):
    """A cropped grey-scale-on-paper image of one text line, RGB."""
    from PIL import Image, ImageDraw
    font = _font(rng, int(rng.integers(22, 40)))
    paper, ink = int(rng.integers(200, 256)), int(rng.integers(0, 70))
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    pad = int(rng.integers(2, 8))
    image = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), (paper,) * 3)
    ImageDraw.Draw(image).text((pad - left, pad - top), text, fill=(ink,) * 3, font=font)
    noisy = np.asarray(image, np.float32) + rng.normal(0, 6, (image.height, image.width, 1))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _fit_line(image, height: int, width: int) -> np.ndarray:
    """PP-OCR's resize_norm_img: keep the aspect ratio at `height`, scale to [-1, 1], zero-pad on the right."""
    scaled = min(width, int(np.ceil(height * image.width / image.height)))
    pixels = np.asarray(image.resize((scaled, height)), np.float32).transpose(2, 0, 1) / 255.0
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :scaled] = (pixels - 0.5) / 0.5
    return out


def text_lines_rec(n: int, seed: int, model_path: Path, cache: Path) -> tuple[dict, dict]:
    """Text lines of 1-4 words for the recognizer, [N,3,48,320]."""
    rng = np.random.default_rng(seed)
    texts = [_phrase(rng, int(rng.integers(1, 5))) for _ in range(n)]
    x = np.stack([_fit_line(_line_image(rng, t), 48, 320) for t in texts])
    return {"x": x}, {"texts": texts}


def text_lines_cls(n: int, seed: int, model_path: Path, cache: Path) -> tuple[dict, dict]:
    """Text lines for the orientation classifier, [N,3,48,192], every other one turned by 180 degrees (label 1)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    images = []
    for label in labels:
        line = _line_image(rng, _phrase(rng, int(rng.integers(1, 4))))
        images.append(_fit_line(line.rotate(180) if label else line, 48, 192))
    return {"x": np.stack(images)}, {"labels": labels.tolist()}


def text_pages(n: int, seed: int, model_path: Path, cache: Path, size: int = 320) -> tuple[dict, dict]:
    """Pages of 2-5 text lines at random places, [N,3,size,size], scaled to [-1, 1] as rapidocr's detector does."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    pages = []
    for _ in range(n):
        page = Image.new("RGB", (size, size), (int(rng.integers(215, 256)),) * 3)
        for _ in range(int(rng.integers(2, 6))):
            line = _line_image(rng, _phrase(rng, int(rng.integers(1, 4))))
            line = line.resize((max(1, line.width * 2 // 3), max(1, line.height * 2 // 3)))
            x = int(rng.integers(0, max(1, size - line.width)))
            page.paste(line, (x, int(rng.integers(0, size - line.height))))
        pages.append((np.asarray(page, np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5)
    return {"x": np.stack(pages).astype(np.float32)}, {}


def _photo_crops(n: int, rng: np.random.Generator, cache: Path, size: int, resample: int | None = None) -> list:
    """n random crops (60-100% of each side) of scikit-image's sample photographs, flipped left-right half the
    time, scaled so that the longer side is `size` (RGB images, to be letterboxed at the top left)."""
    from PIL import Image
    sources = [Image.open(extract(corpus.SKIMAGE, m, d, cache)).convert("RGB") for m, d in corpus.PHOTOS.items()]
    crops = []
    for _ in range(n):
        photo = sources[rng.integers(len(sources))]
        keep = rng.uniform(0.6, 1.0)
        w, h = int(photo.width * keep), int(photo.height * keep)
        x, y = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        crop = photo.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        scale = size / max(w, h)
        crops.append(crop.resize((max(1, int(w * scale)), max(1, int(h * scale))), resample))
    return crops


def photos(n: int, seed: int, model_path: Path, cache: Path, size: int = 320) -> tuple[dict, dict]:
    """Random crops and flips of scikit-image's sample photographs, letterboxed to [N,3,size,size] in [0, 1]."""
    batch = np.zeros((n, 3, size, size), np.float32)
    for i, crop in enumerate(_photo_crops(n, np.random.default_rng(seed), cache, size)):
        batch[i, :, :crop.height, :crop.width] = np.asarray(crop, np.float32).transpose(2, 0, 1) / 255.0
    return {"images": batch}, {}


def ddddocr_charset(cache: Path) -> list[str]:
    """CHARSET_BETA of the wheel's ddddocr/charsets.py (the classes of common.onnx, blank first), read as a literal."""
    import ast
    tree = ast.parse(extract(corpus.DDDDOCR, *corpus.DDDDOCR_CHARSETS, cache).read_text(encoding="utf-8"))
    return next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                and getattr(node.targets[0], "id", "") == "CHARSET_BETA")


def _ddddocr_line(image, width: int) -> np.ndarray:
    """ddddocr's OCREngine._preprocess_image: LANCZOS resize to height 64 keeping the aspect ratio, grey ('L'),
    /255 (no mean or deviation); then padded on the right to `width` with the line's paper grey (its median), as a
    wider crop of the same paper would read. [1, 64, width]."""
    from PIL import Image
    grey = np.asarray(image.resize((int(image.width * 64 / image.height), 64), Image.LANCZOS).convert("L"),
                      np.float32) / 255.0
    out = np.full((1, 64, width), np.median(grey), np.float32)
    out[0, :, :grey.shape[1]] = grey[:, :width]
    return out


def ddddocr_lines(n: int, seed: int, model_path: Path, cache: Path, width: int = 256) -> tuple[dict, dict]:
    """Text lines of 1-2 words for ddddocr's recognizer, [N,1,64,width]; a line wider than `width` at height 64 is
    drawn again. Truth: the texts without spaces (a captcha reader, it does not write the gap between words)."""
    rng = np.random.default_rng(seed)
    lines, texts = [], []
    while len(lines) < n:
        text = _phrase(rng, int(rng.integers(1, 3)))
        image = _line_image(rng, text)
        if image.width * 64 / image.height <= width:
            lines.append(_ddddocr_line(image, width))
            texts.append(text.replace(" ", ""))
    truth = {"texts": texts, "chars": ddddocr_charset(cache), "time_first": True}
    return {"input1": np.stack(lines)}, truth


def ddddocr_photos(n: int, seed: int, model_path: Path, cache: Path, size: int = 416) -> tuple[dict, dict]:
    """Click captchas for ddddocr's detector: photographs with 3-5 letters or digits drawn on them in random fonts,
    sizes and colours, fed as DetectionEngine.preproc does: bilinear resize of the longer side to `size`, top-left
    letterbox filled with 114, BGR channel order, pixel values 0..255. [N,3,size,size]."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    batch = np.full((n, 3, size, size), 114.0, np.float32)
    for i, crop in enumerate(_photo_crops(n, rng, cache, size, Image.BILINEAR)):
        draw = ImageDraw.Draw(crop)
        for _ in range(int(rng.integers(3, 6))):
            font = _font(rng, int(rng.integers(30, 60)))
            char = CAPTCHA_CHARS[rng.integers(len(CAPTCHA_CHARS))]
            at = (int(rng.integers(0, max(1, crop.width - 50))), int(rng.integers(0, max(1, crop.height - 50))))
            draw.text(at, char, font=font, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        batch[i, :, :crop.height, :crop.width] = np.asarray(crop, np.float32).transpose(2, 0, 1)[::-1]
    return {"images": batch}, {}


def speech_like(seconds: float, seed: int, rate: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """Audio of voiced syllables (harmonics of a gliding pitch shaped by moving formants), noise bursts and pauses.

    Returns the samples and a per-sample flag of where syllables are, for checking the original model's decisions.
    """
    rng = np.random.default_rng(seed)
    total = int(seconds * rate)
    audio, voiced, at = rng.normal(0, 0.003, total), np.zeros(total, bool), int(rng.integers(0, rate // 2))
    while at < total:
        length = min(total - at, int(rng.uniform(0.4, 1.6) * rate))
        t = np.arange(length) / rate
        pitch = rng.uniform(95, 230) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        formants = rng.uniform([300, 900, 2200], [900, 2300, 3200], size=(3,)) \
            * (1 + 0.2 * np.sin(2 * np.pi * 4 * t[:, None] + rng.uniform(0, 6, 3)))
        wave = sum(np.exp(-(((k * pitch)[:, None] - formants) / 150.0) ** 2).sum(1) * np.sin(k * phase) / k ** 0.5
                   for k in range(1, 30))
        syllables = np.clip(np.sin(np.pi * t * rng.uniform(3, 6)) ** 2 * 1.4, 0, 1)
        audio[at:at + length] += 0.3 * wave * syllables / (np.abs(wave).max() + 1e-9)
        voiced[at:at + length] = True
        at += length + int(rng.uniform(0.3, 1.2) * rate)
    return audio.astype(np.float32), voiced


def _frames(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n chunks of 512 samples at 16 kHz with the 64 samples before each (Silero's context), [n, 576]."""
    audio, voiced = speech_like((n * 512 + 64) / 16000 + 0.01, seed)
    starts = np.arange(n) * 512
    frames = np.stack([audio[s:s + 576] for s in starts])
    return frames, voiced[starts + 64 + 256]


def audio_frames_seq(n: int, seed: int, model_path: Path, cache: Path) -> tuple[dict, dict]:
    """Consecutive 32 ms frames for the sequence model (its batch axis is time); its LSTM state inputs h and c
    hold no batch axis and are left out, so they start at zeros."""
    frames, voiced = _frames(n, seed)
    return {"input": frames}, {"voiced": voiced.tolist()}


def audio_frames_batch(n: int, seed: int, model_path: Path, cache: Path) -> tuple[dict, dict]:
    """Frames for the batched model, sample first: input [n, 576], state [n, 2, 128] of zeros (the model holds
    its batch on axis 1), sr one value for all, 16000."""
    frames, voiced = _frames(n, seed)
    return ({"input": frames, "state": np.zeros((n, 2, 128), np.float32), "sr": np.array(16000, np.int64)},
            {"voiced": voiced.tolist()})


def _magika_features(content: bytes, size: int, padding: int) -> np.ndarray:
    """Magika's features: the first and last `size` bytes after stripping whitespace, padded with `padding`."""
    begin = list(content[:4096].lstrip()[:size])
    end = list(content[-4096:].rstrip()[-size:])
    return np.array(begin + [padding] * (size - len(begin)) + [padding] * (size - len(end)) + end, np.int32)


def file_bytes(n: int, seed: int, model_path: Path, cache: Path) -> tuple[dict, dict]:
    """Files from the cached magika and scikit-image wheels (Python, C extensions, JSON, PNG...) as Magika features."""
    rng = np.random.default_rng(seed)
    contents = []
    for wheel in (corpus.MAGIKA, corpus.SKIMAGE):
        with zipfile.ZipFile(fetch_wheel(wheel, cache)) as archive:
            names = sorted(i.filename for i in archive.infolist() if i.file_size >= 8)
            for name in rng.choice(names, size=min(len(names), n), replace=False):
                contents.append((name, archive.read(name)))
    picked = [contents[i] for i in rng.choice(len(contents), size=n, replace=len(contents) < n)]
    features = np.stack([_magika_features(c, 1024, 256) for _, c in picked])
    return {"bytes": features}, {"files": [name for name, _ in picked]}


def token_ids(n: int, seed: int, model_path: Path, cache: Path, length: int = 32) -> tuple[dict, dict]:
    """Sentences of 6-30 word-piece ids from the uncased BERT vocabulary's whole-word range, [CLS]/[SEP], padded."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, length), np.int64)
    mask = np.zeros((n, length), np.int64)
    for i in range(n):
        words = int(rng.integers(6, length - 1))
        ids[i, :words + 2] = [101, *rng.integers(1996, 29612, size=words), 102]
        mask[i, :words + 2] = 1
    return {"input_ids": ids, "attention_mask": mask}, {}


GENERATORS = {f.__name__: f for f in (text_lines_rec, text_lines_cls, text_pages, photos, ddddocr_lines,
                                      ddddocr_photos, audio_frames_seq, audio_frames_batch, file_bytes, token_ids)}
