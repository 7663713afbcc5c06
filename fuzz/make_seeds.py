#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ from the repository's own small files plus a few
hand-made documents. Standard library only. Run from anywhere: python3 fuzz/make_seeds.py"""
import io, json, os, pickle, struct, sys, types, zipfile, zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")
FIX = os.path.join(ROOT, "tests", "fixtures")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def read(*p):
    with open(os.path.join(ROOT, *p), "rb") as f:
        return f.read()


# --- a tiny PyTorch-style checkpoint pickle: {"w": _rebuild_tensor_v2(storage, 0, (2,), (1,), False, {})}
utils = types.ModuleType("torch._utils")
torch = types.ModuleType("torch")
sys.modules["torch"], sys.modules["torch._utils"] = torch, utils


def _rebuild_tensor_v2(*a):
    return a


class FloatStorage:
    pass


_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
FloatStorage.__module__ = "torch"
torch.FloatStorage = FloatStorage


class Storage:
    def __init__(self, key, n):
        self.key, self.n = key, n


class Tensor:
    def __init__(self, st, shape):
        self.st, self.shape = st, shape

    def __reduce__(self):
        stride = (1,) if len(self.shape) == 1 else (self.shape[1], 1)
        return (_rebuild_tensor_v2, (self.st, 0, self.shape, stride, False, {}))


class P(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", FloatStorage, obj.key, "cpu", obj.n)
        return None


buf = io.BytesIO()
P(buf, protocol=2).dump({"model": {"a.weight": Tensor(Storage("0", 4), (2, 2)),
                                   "a.bias": Tensor(Storage("1", 2), (2,))}})
pkl = buf.getvalue()
put("pickle", "tiny_state_dict.pkl", pkl)
put("pickle", "plain.pkl", pickle.dumps({"x": [1, 2.5, "s", (None, True)], "y": b"\x00\x01"}, protocol=2))

z = io.BytesIO()
with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("archive/data.pkl", pkl)
    zf.writestr("archive/byteorder", "little")
    zf.writestr("archive/data/0", struct.pack("<4f", 1, 2, 3, 4))
    zf.writestr("archive/data/1", struct.pack("<2f", 5, 6))
    zf.writestr("archive/version", "3\n")
put("pth", "tiny.pth", z.getvalue())

# --- safetensors
hdr = json.dumps({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                  "b": {"dtype": "F16", "shape": [2], "data_offsets": [16, 20]},
                  "__metadata__": {"format": "pt"}}).encode()
put("safetensors", "tiny.safetensors", struct.pack("<Q", len(hdr)) + hdr + bytes(20))
put("safetensors", "msdeform_small.safetensors", read("tests", "fixtures", "msdeform", "small.safetensors"))

# --- model configs: byte 0 even = YAML, odd = JSON (JSON is also YAML)
cfg = read("tests", "fixtures", "referdino-tiny", "config.json")
put("model_config", "fixture.json", b"\x01" + cfg)
put("model_config", "fixture_as_yaml", b"\x00" + cfg)
put("model_config", "official_style.yaml", b"\x00" + b"backbone:\n  value: swin_t_224_1k\nhidden_dim:\n  value: 256\nnum_queries:\n  value: 900\n")

# --- engine dir manifest (even) and plan sidecar (odd)
spec = lambda n, s: {"name": n, "dtype": "f32", "shape": s}
manifest = {"format": 1, "producer": "referdino", "backbone": "swin_t", "hidden_dim": 256, "queries": 900,
            "tracking_alpha": 0.1, "geometry": {"height": 64, "width": 96, "max_text": 16, "window": 2},
            "opset": 17, "custom_ops": "native", "taps": False,
            "engines": [{"name": "frame", "file": "frame.onnx", "bytes": 10, "nodes": 3,
                         "inputs": [spec("image", [1, 3, 64, 96])], "outputs": [spec("logits", [1, 900, 16])]}]}
put("engine_dir", "manifest.json", b"\x00" + json.dumps(manifest).encode())
plan = {"engine": "frame", "profile": "agx-orin-swin-t-fp16", "tensorrt": 100300, "device": "Orin",
        "compute_capability": [8, 7], "dla_core": None,
        "inputs": [spec("image", [1, 3, 64, 96])], "outputs": [spec("logits", [1, 900, 16])]}
put("engine_dir", "frame.plan.json", b"\x01" + json.dumps(plan).encode())

# --- profiles (0 mod 3), recipes (1 mod 3), scale tables (2 mod 3)
for name in ("agx-orin-swin-t-int8.toml", "orin-nano-swin-b-fp16.toml"):
    put("profiles", "profile_" + name, b"\x00" + read("engines", "profiles", name))
put("profiles", "profile_tiny.toml", b"\x00" + read("engines", "test-profiles", "referdino-tiny-int8.toml"))
put("profiles", "recipe_tiny.toml", b"\x01" + read("calib", "referdino-tiny.toml"))
table = {"version": 1, "model": "tiny", "method": {"method": "percentile", "percentile": 99.99},
         "calibration_set": "x", "tensors": {"a": {"kind": "per_tensor", "scale": 0.01, "amax": 1.27},
                                            "w": {"kind": "per_channel", "axis": 0, "scales": [0.1, 0.2]}}}
put("profiles", "scales.json", b"\x02" + json.dumps(table).encode())

# --- command lines
put("command_line", "session.txt", b'{"prompt":"the dog on the left","id":1}\n{"cmd":"mode","mode":"multi","threshold":0.3}\n'
    b'{"cmd":"pause"}\n{"cmd":"resume","id":"x"}\n{"cmd":"status"}\n{"cmd":"clear"}\n\n')
put("command_line", "bad.txt", b'{"cmd":"nope"}\n{"prompt":""}\n\xff\xfe\n{"prompt":"a"')

# --- image frames: two tiny PNGs and a JPEG skeleton (SOI, APP0, EOI); the fuzzer grows the rest.
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


rows = b"".join(b"\x00" + bytes(sum(([x * 60, y * 80, 120] for x in range(4)), [])) for y in range(3))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 3, 8, 2, 0, 0, 0)) + \
    chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
put("image_frame", "rgb4x3.png", png)
pal = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 3, 8, 3, 0, 0, 0)) + \
    chunk(b"PLTE", bytes([0, 0, 0, 128, 0, 0, 0, 128, 0])) + \
    chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + bytes([0, 1, 2, 1]) for _ in range(3)))) + chunk(b"IEND", b"")
put("image_frame", "palette4x3.png", pal)
put("image_frame", "jpeg_magic", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9")

# --- ring file: valid header, 2 slots of a 4x4 mask, one commit
W, H, N = 4, 4, 2
slot = (448 + W * H + 63) // 64 * 64
head = bytearray(128)
head[0:8] = b"RDMASKR\x00"
struct.pack_into("<IIIIIIIIQII", head, 8, 1, 128, N, slot, W, H, 16, 448, 1, 1234, 1)
slots = bytearray(slot * N)
struct.pack_into("<QQQII", slots, 0, 2, 7, 1000, 1, 0)
struct.pack_into("<I", slots, 32, 3)
struct.pack_into("<f", slots, 96, 0.9)
slots[448:448 + W * H] = bytes([1] * (W * H))
put("ring_reader", "ring_2x4x4.bin", bytes(head) + bytes(slots))
# --- source words (even first byte) and raw frames (odd: format, width, height, bytes)
put("source_spec", "raw.txt", b"\x00raw:64x48:nv12:/tmp/cam.fifo")
put("source_spec", "gst.txt", b"\x02gst:320x180:filesrc location='a b.mp4' ! qtdemux ! \"video/x-raw(memory:NVMM)\" ! a\\ b")
put("source_spec", "csi.txt", b"\x04csi:1:1280x720@60")
put("source_spec", "nv12_4x2.bin", b"\x01\x05\x04\x02" + bytes(range(12)))
put("source_spec", "bgrx_3x2.bin", b"\x01\x03\x03\x02" + bytes(range(24)))
# As frames a source hands over: a whole 4x2 YUYV frame (layout 2 % 3), a short 4x2 RGB one.
put("source_spec", "yuyv_frame_4x2.bin", b"\x01\x02\x04\x02" + bytes(range(16)))
put("source_spec", "short_rgb_4x2.bin", b"\x01\x00\x04\x02" + bytes(range(23)))
# --- MeViS mask_dict entries (COCO RLE): compressed counts, a run list, and the bare string
put("mask_rle", "compressed_37x53.json", json.dumps({"size": [37, 53], "counts": "Y=1Q16L2M4N0O2N2O000O2O000000000O20N10000000001N10001N2N102LDLL25NNL54>00000000000000000000"}))
put("mask_rle", "runs_3x2.json", json.dumps({"size": [2, 3], "counts": [1, 2, 3]}))
put("mask_rle", "counts.txt", "11ooooooooooo?1")
# --- a host INT8 graph (onnx::int8_products): x -> Q/DQ (uint8, 128) -> MatMul by Q/DQ(W, axis 1) -> Add
# bias, and x . transpose(x) with both operands Q/DQ; protobuf written by hand (standard library only).
def varint(v):
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def fld(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload


def s(num, text):
    return fld(num, 2, text.encode())


def tensor(name, dims, dtype, raw):
    return b"".join(fld(1, 0, d) for d in dims) + fld(2, 0, dtype) + s(8, name) + fld(9, 2, raw)


def node(op, name, ins, outs, axis=None, perm=None):
    body = b"".join(s(1, i) for i in ins) + b"".join(s(2, o) for o in outs) + s(3, name) + s(4, op)
    if axis is not None:
        body += fld(5, 2, s(1, "axis") + fld(3, 0, axis) + fld(20, 0, 2))
    if perm is not None:
        body += fld(5, 2, s(1, "perm") + b"".join(fld(8, 0, p) for p in perm) + fld(20, 0, 7))
    return fld(1, 2, body)


def value_info(name, dims):
    shape = b"".join(fld(1, 2, fld(1, 0, d)) for d in dims)
    return s(1, name) + fld(2, 2, fld(1, 2, fld(1, 0, 1) + fld(2, 2, shape)))


f32 = lambda vals: struct.pack("<%df" % len(vals), *vals)
graph = b"".join([
    node("QuantizeLinear", "xq", ["x", "xs", "zp"], ["x_q"]),
    node("DequantizeLinear", "xdq", ["x_q", "xs", "zp"], ["x_dq"]),
    node("QuantizeLinear", "wq", ["w", "ws", "wz"], ["w_q"], axis=1),
    node("DequantizeLinear", "wdq", ["w_q", "ws", "wz"], ["w_dq"], axis=1),
    node("MatMul", "mm", ["x_dq", "w_dq"], ["h"]),
    node("Add", "add", ["h", "b"], ["y"]),
    node("Transpose", "t", ["x"], ["xt"], perm=[1, 0]),
    node("QuantizeLinear", "tq", ["xt", "xs", "zp"], ["xt_q"]),
    node("DequantizeLinear", "tdq", ["xt_q", "xs", "zp"], ["xt_dq"]),
    node("MatMul", "att", ["x_dq", "xt_dq"], ["y2"]),
    s(2, "int8_products"),
    fld(5, 2, tensor("xs", [], 1, f32([0.02]))),
    fld(5, 2, tensor("zp", [], 2, bytes([128]))),
    fld(5, 2, tensor("w", [4, 3], 1, f32([0.1 * (i - 6) for i in range(12)]))),
    fld(5, 2, tensor("ws", [3], 1, f32([0.005, 0.004, 0.006]))),
    fld(5, 2, tensor("wz", [3], 3, bytes(3))),
    fld(5, 2, tensor("b", [3], 1, f32([0.5, -0.5, 0.25]))),
    fld(11, 2, value_info("x", [2, 4])),
    fld(12, 2, value_info("y", [2, 3])),
    fld(12, 2, value_info("y2", [2, 2])),
])
model = fld(1, 0, 8) + s(2, "make_seeds") + fld(7, 2, graph) + fld(8, 2, s(1, "") + fld(2, 0, 17))
put("int8_products", "host_int8.onnx", model)
print("seeds written to", OUT)
