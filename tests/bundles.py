"""Real small bundles for tests: an untrained (random-weight) model of the family, converted to int8 TFLite by
the real converter and calibrated with real front-end frames of the repository's FSDD clips."""
from pathlib import Path

FSDD_CLIPS = Path(__file__).resolve().parent / "data" / "fsdd"


def build_tiny_bundle(out_dir: Path, seed: int, width: int = 8) -> Path:
    import keras

    from firmware_tools import dataset, pipeline
    from firmware_tools.bundler import FSDD_PROVENANCE
    from firmware_tools.model import ModelSpec, build_window_model
    from firmware_tools.training import DEFAULT_FRONTEND

    labels = [str(d) for d in range(10)]
    keras.utils.set_random_seed(seed)
    model = build_window_model(ModelSpec(channels=DEFAULT_FRONTEND.features, classes=11, width=width,
                                         dilations=(1, 2, 4)))
    work = out_dir.parent / f"{out_dir.name}-work"
    work.mkdir(parents=True, exist_ok=True)
    model_path = work / "model.keras"
    model.save(model_path)
    clips = dataset.scan_labelled(FSDD_CLIPS)[:12]
    pipeline.convert_into_bundle(model_path, clips, out_dir, DEFAULT_FRONTEND, labels,
                                 provenance=FSDD_PROVENANCE, name=f"tiny-{seed}")
    return out_dir


def requantized_bundle(base: Path, out_dir: Path, *, frame=None, new_state=None):
    """A bundle of `base`'s step model with its frame input or its new-state output quantised as (scale, zero point)
    instead: what another converter might have made. Either gets a QUANTIZE op between it and the layers, as a
    converter would add one: before the stem for the frame, after the last layer for the new state. Writing the
    bundle loads it, so this raises whatever loading raises."""
    import copy
    import json

    import flatbuffers
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema

    from edge.bundle import load_bundle
    from firmware_tools.bundler import make_bundle

    original = load_bundle(base)
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(original.step_model_path.read_bytes(), 0))
    graph = model.subgraphs[0]
    rank = lambda index: len(graph.tensors[index].shape)
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
    code.version = 1
    model.operatorCodes.append(code)

    def requantize(outer: int, quantization, is_input: bool) -> None:
        """Model tensor `outer` keeps its index (the signature names it) and takes `quantization`; the layers use
        a copy of it with the old one, and a QUANTIZE op converts between the two."""
        graph.tensors.append(copy.deepcopy(graph.tensors[outer]))
        inner = len(graph.tensors) - 1
        graph.tensors[inner].name = graph.tensors[outer].name + b"_requantized"
        for op in graph.operators:
            if is_input:
                op.inputs = np.where(np.asarray(op.inputs) == outer, inner, op.inputs)
            else:
                op.outputs = np.where(np.asarray(op.outputs) == outer, inner, op.outputs)
        quantize = schema.OperatorT()
        quantize.opcodeIndex = len(model.operatorCodes) - 1
        quantize.inputs, quantize.outputs = ([outer], [inner]) if is_input else ([inner], [outer])
        graph.operators.insert(0 if is_input else len(graph.operators), quantize)
        _set_quantization(graph.tensors[outer], quantization)

    if frame is not None:
        requantize(next(i for i in graph.inputs if rank(i) == 2), frame, is_input=True)
    if new_state is not None:
        requantize(next(i for i in graph.outputs if rank(i) == 3), new_state, is_input=False)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    model_path = out_dir.parent / f"{out_dir.name}.tflite"
    model_path.write_bytes(bytes(builder.Output()))
    spec = json.loads((Path(base) / "manifest.json").read_text())["models"]["step"]["spec"]
    return make_bundle(out_dir, model_path, original.frontend_config, original.labels, spec=spec)


def _set_quantization(tensor, scale_and_zero_point):
    import numpy as np

    scale, zero_point = scale_and_zero_point
    tensor.quantization.scale = np.array([scale], np.float32)
    tensor.quantization.zeroPoint = np.array([zero_point], np.int64)
