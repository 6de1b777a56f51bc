"""Converting a decode step in little memory: TFLite's converter runs on a template, and every
block's weights are then written into its flatbuffer here.

TFLiteConverter holds several copies of the weights it converts (1558M in int8: 16 GB at its
peak, measured, beside the 6 GB model; killed for memory on a 24 GB machine). So the converter
sees a template: the real embeddings and final layer norm, but the n_layer blocks all share one
set of stand-in weights. The stand-ins are random, so that nothing in them is special to the
converter: a zero bias or a unit gain would be folded away, and equal constants merged into one.
In the converter's output each stand-in is then one tensor that n_layer operators read, in block
order; `fill` gives each of those reads its own tensor holding that block's real weights,
quantized as the converter quantizes (int8 per output channel, scale max|w| / 127, zero point 0:
TFLite's dynamic-range scheme; tests check the result against the converter's own).

int4 starts from the int8 template and stores every matrix a FULLY_CONNECTED reads (the blocks'
and the output layer's) in 4 bits instead (`int4_blocks`): signed, two to a byte, low nibble
first, one float16 scale per BLOCK_SIZE inputs of an output channel, in TFLite schema's
BlockwiseQuantization, which XNNPACK multiplies without unpacking the weights (its qb4w kernels:
activations quantized to int8 per row on the fly, as in int8). Blocks of 32 as llama.cpp's
q4_0 and the GPTQ paper's groups; no calibration data.

The flatbuffer is read and written with TFLite's generated schema (`schema_py_generated`, the
object API); buffers stay 16-byte aligned, as the converter writes them.
"""

from __future__ import annotations

import copy

import flatbuffers
import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

from gpt2_tf2.core.hparams import INT4_BLOCK, HParams
from gpt2_tf2.core.layout import is_block, needed  # noqa: F401 (their names here before)
from gpt2_tf2.core.tflite_step import lite_layout

ALIGNMENT = 16  # TFLite's schema: Buffer.data (force_align: 16)
BLOCK_SIZE = INT4_BLOCK  # int4: inputs per scale
FULLY_CONNECTED = 9  # TFLite schema's BuiltinOperator


def suffix(name: str) -> str:
    return name.split("/", 2)[2]  # model/h7/attn/c_attn/w -> attn/c_attn/w


def template(named: dict, hp: HParams, layers=None, seed: int = 0) -> tuple[dict, dict]:
    """(weights for the converter, the stand-ins by block suffix) from weights by OpenAI name,
    for the blocks `layers` (first, end; default all) and what that part reads besides.

    The converter's weights are every weight outside the blocks, taken (popped) from `named`,
    and for every block the same stand-in arrays; `named` keeps the real block weights."""
    layers = layers or (0, hp.n_layer)
    rng = np.random.default_rng(seed)
    stand_in, weights, blocks = {}, {}, []
    for name in sorted(named):
        if not needed(name, hp, layers):
            continue
        if not is_block(name):
            weights[name] = lite_layout(name, named.pop(name))
            continue
        blocks.append(name)
        if name.startswith(f"model/h{layers[0]}/"):
            shape = lite_layout(name, named[name]).shape
            stand_in[suffix(name)] = rng.normal(0.5, 0.1, shape).astype(np.float32)
    for name in blocks:
        weights[name] = stand_in[suffix(name)]
    return weights, stand_in


def fill(
    data: bytes, stand_in: dict, named: dict, hp: HParams, layers=None, int4=None
) -> memoryview:
    """The converted template `data` with block i's weights `named.pop("model/h{i}/...")` where
    it read the stand-ins: a .tflite file of the real model (of its blocks `layers`).

    `int4`: {} or, for a part that computes logits, {"output": the output layer's float
    weights [vocab, embd] (`lite_layout`)}; every matrix a FULLY_CONNECTED reads, the blocks'
    and the output layer's, is then stored in 4 bits (`int4_blocks`; `data` is the int8
    template's conversion)."""
    first, end = layers or (0, hp.n_layer)
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    if len(model.subgraphs) != 1:
        raise ConversionError(f"{len(model.subgraphs)} subgraphs")
    graph = model.subgraphs[0]
    for name, value in stand_in.items():
        index = _find(model, graph, value, name)
        uses = [(op, k) for op in graph.operators for k, t in enumerate(op.inputs) if t == index]
        if len(uses) != end - first:
            raise ConversionError(f"{name} is read {len(uses)} times, not once per block")
        original = graph.tensors[index]
        model.buffers[original.buffer].data = None  # the stand-in itself is dropped
        for layer, (op, k) in enumerate(uses, start=first):
            real = lite_layout(name, named.pop(f"model/h{layer}/{name}"))
            tensor = copy.copy(original)
            tensor.name = f"model/h{layer}/{name}".encode()
            if int4 is not None and original.type == schema.TensorType.INT8:
                _store_int4(model, graph, tensor, real)
            else:
                tensor.quantization, stored = _stored(real, original)
                _add_buffer(model, tensor, stored)
            if layer == first:
                graph.tensors[index] = tensor
            else:
                op.inputs[k] = len(graph.tensors)
                graph.tensors.append(tensor)
    if int4 and "output" in int4:
        _output_int4(model, graph, int4["output"])
    return _pack(model)


def _add_buffer(model, tensor, stored: np.ndarray) -> None:
    """Give `tensor` a new buffer holding `stored`."""
    tensor.buffer = len(model.buffers)
    model.buffers.append(schema.BufferT())
    model.buffers[-1].data = stored.reshape(-1).view(np.uint8)


def _output_int4(model, graph, output: np.ndarray) -> None:
    """Store the output layer's matrix, which the converter wrote in int8 (the one int8
    [vocab, embd] tensor a FULLY_CONNECTED reads as weights; the embedding's gather keeps its
    own int8 copy), in 4 bits from its float values `output`."""
    ops = {i for i, code in enumerate(model.operatorCodes) if _builtin(code) == FULLY_CONNECTED}
    read = {op.inputs[1] for op in graph.operators if op.opcodeIndex in ops}
    found = [
        i
        for i in sorted(read)
        if graph.tensors[i].type == schema.TensorType.INT8
        and tuple(graph.tensors[i].shape) == output.shape
    ]
    if len(found) != 1:
        raise ConversionError(f"{len(found)} int8 output layers")
    index = found[0]
    tensor = copy.copy(graph.tensors[index])
    for op in graph.operators:  # the fully connected reads get the new tensor, a gather not
        if op.opcodeIndex in ops and op.inputs[1] == index:
            op.inputs[1] = len(graph.tensors)
    graph.tensors.append(tensor)
    if not any(index in op.inputs for op in graph.operators):
        model.buffers[tensor.buffer].data = None  # the int8 copy no one reads now
    _store_int4(model, graph, tensor, output)


def _builtin(code) -> int:
    # Operator codes past 127 live in builtinCode; deprecatedBuiltinCode holds the rest.
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def int4_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w [out, in] in 4 bits: (values int8 in -8..7 [out, in], float16 scales [out,
    in / BLOCK_SIZE]), w ~ values * scale of its block. A block's scale maps its largest
    magnitude to -8 when that value is negative, else to 7 (so each uses the full signed range
    where it can; XNNPACK takes only positive scales, unlike q4_0's signed ones). Scales are
    rounded to float16 before the values are, so values and stored scales agree."""
    out, inputs = w.shape
    blocks = w.reshape(out, inputs // BLOCK_SIZE, BLOCK_SIZE)
    extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)[..., 0]
    scale = np.where(extreme < 0, -extreme / 8, extreme / 7).astype(np.float16)
    tiny = np.float16(2**-24)  # float16's smallest: an all-zero or tiny block still gets one > 0
    scale = np.maximum(scale, tiny)
    values = np.clip(np.round(blocks / scale.astype(np.float32)[..., None]), -8, 7)
    return values.astype(np.int8).reshape(out, inputs), scale


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Signed 4-bit values, two to a byte, the first in the low nibble (TFLite's INT4)."""
    flat = values.reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, np.int8(0))
    return ((flat[0::2] & 0xF) | ((flat[1::2] & 0xF) << 4)).astype(np.uint8)


def _store_int4(model, graph, tensor, w: np.ndarray) -> None:
    """Make `tensor` the 4-bit blockwise form of w [out, in], its scales a new float16 tensor."""
    if w.ndim != 2 or w.shape[1] % BLOCK_SIZE:
        raise ConversionError(f"a weight of shape {w.shape} for int4 blocks of {BLOCK_SIZE}")
    values, scale = int4_blocks(np.asarray(w, np.float32))
    scales = schema.TensorT()
    scales.name, scales.shape = tensor.name + b"/scales", list(scale.shape)
    scales.type = schema.TensorType.FLOAT16
    _add_buffer(model, scales, scale)
    graph.tensors.append(scales)
    details = schema.BlockwiseQuantizationT()
    details.scales, details.blockSize = len(graph.tensors) - 1, BLOCK_SIZE
    params = schema.QuantizationParametersT()
    params.detailsType = schema.QuantizationDetails.BlockwiseQuantization
    params.details = details
    tensor.type, tensor.quantization = schema.TensorType.INT4, params
    _add_buffer(model, tensor, pack_int4(values))


class ConversionError(RuntimeError):
    """The converter's output is not shaped as `fill` expects (a TensorFlow version that
    converts differently): a bug to report, not a user's mistake."""

    def __init__(self, what: str):
        super().__init__(f"TensorFlow Lite's converter output is not as expected: {what}")


def _find(model, graph, value: np.ndarray, name: str) -> int:
    """The index of the one tensor holding the stand-in `value` (int8: as quantized)."""
    found = []
    for index, tensor in enumerate(graph.tensors):
        data = model.buffers[tensor.buffer].data
        float32 = tensor.type == schema.TensorType.FLOAT32
        if data is None or len(data) != value.size * (4 if float32 else 1):
            continue
        if float32:
            if np.array_equal(data.view(np.float32), value.reshape(-1)):
                found.append(index)
        elif tensor.type == schema.TensorType.INT8 and tuple(tensor.shape) == value.shape:
            q = tensor.quantization
            scale = _broadcast(np.asarray(q.scale, np.float32), q.quantizedDimension, value)
            error = np.abs(data.view(np.int8).reshape(value.shape) * scale - value)
            if np.all(error <= 0.501 * scale):
                found.append(index)
    if len(found) != 1:
        raise ConversionError(f"{len(found)} tensors hold the stand-in for {name}")
    return found[0]


def _broadcast(scale: np.ndarray, axis: int, value: np.ndarray) -> np.ndarray:
    """Per-channel scales shaped to broadcast against `value` along `axis` (or one scale)."""
    if scale.size == 1:
        return scale.reshape([1] * value.ndim)
    shape = [1] * value.ndim
    shape[axis] = scale.size
    return scale.reshape(shape)


def _stored(real: np.ndarray, original) -> tuple:
    """(quantization parameters, stored values) for `real` in the place of tensor `original`:
    float32 as it is, or int8 as the converter quantized the stand-in (per channel along its
    quantized dimension, or per tensor)."""
    if original.type == schema.TensorType.FLOAT32:
        return None, np.ascontiguousarray(real, np.float32)
    if original.type != schema.TensorType.INT8:
        raise ConversionError(f"a block weight of type {original.type}")
    q = original.quantization
    axis = q.quantizedDimension
    if len(q.scale) == 1:
        top = np.abs(real).max(keepdims=True)
    else:
        others = tuple(a for a in range(real.ndim) if a != axis)
        top = np.abs(real).max(axis=others, keepdims=True)
    scale = (top / np.float32(127)).astype(np.float32)
    scale[scale == 0] = 1  # an all-zero channel: any scale stores it as zeros
    stored = np.clip(np.round(real / scale), -127, 127).astype(np.int8)
    params = schema.QuantizationParametersT()
    params.scale = scale.reshape(-1)
    params.zeroPoint = np.zeros(scale.size, np.int64)
    params.quantizedDimension = axis
    return params, stored


class _AlignedBuffer(schema.BufferT):
    """A buffer whose data starts on a 16-byte boundary, as TFLite's converter writes it."""

    def Pack(self, builder):
        if self.data is not None:
            builder.Prep(ALIGNMENT, len(self.data))  # the data's first byte, once written
        return super().Pack(builder)


def _pack(model) -> memoryview:
    size = 1 << 20
    for i, buffer in enumerate(model.buffers):
        aligned = _AlignedBuffer()
        aligned.data, aligned.offset, aligned.size = buffer.data, buffer.offset, buffer.size
        model.buffers[i] = aligned
        size += 0 if buffer.data is None else len(buffer.data) + ALIGNMENT
    builder = flatbuffers.Builder(size)  # room for it all: no doubling copies
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return memoryview(builder.Bytes)[builder.Head() :]  # the finished bytes, not a copy
