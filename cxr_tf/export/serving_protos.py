"""The few TF Serving protos needed to write a SavedModel warm-up file.

TF Serving replays ``assets.extra/tf_serving_warmup_requests`` (a TFRecord file of
serialized ``tensorflow.serving.PredictionLog``) when it loads a model, so the first
real request does not pay for graph initialisation. Writing that file needs the
``PredictionLog`` message classes. They ship in ``tensorflow-serving-api``, which is
not a cxr_tf dependency, so when it is absent the classes are built here at runtime
from a ``FileDescriptorProto`` carrying the official names and field numbers
(checked against ``tensorflow_serving/apis/{model,predict,prediction_log}.proto``
and the descriptors of ``tensorflow-serving-api`` 2.21). Only the fields cxr_tf
writes or reads are declared; the wire format is identical, so files written with
either set of classes parse with the other.

The runtime classes live in a private descriptor pool: registering
``tensorflow.serving.*`` in the default pool would clash with the official module
if it is imported later in the same process.
"""
from __future__ import annotations

import functools
import types

import numpy as np
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2
from tensorflow.core.framework import tensor_pb2

_F = descriptor_pb2.FieldDescriptorProto


def _field(name, number, ftype, type_name=None, label=_F.LABEL_OPTIONAL, oneof_index=None):
    f = _F(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name
    if oneof_index is not None:
        f.oneof_index = oneof_index
    return f


def _map_entry(name, value_type_name):
    # A proto3 ``map<string, V>`` is a repeated nested ``XxxEntry`` message flagged map_entry.
    entry = descriptor_pb2.DescriptorProto(name=name)
    entry.options.map_entry = True
    entry.field.append(_field("key", 1, _F.TYPE_STRING))
    entry.field.append(_field("value", 2, _F.TYPE_MESSAGE, value_type_name))
    return entry


def _serving_files() -> list[descriptor_pb2.FileDescriptorProto]:
    model = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/apis/model.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    spec = model.message_type.add(name="ModelSpec")
    spec.oneof_decl.add(name="version_choice")
    spec.field.extend([
        _field("name", 1, _F.TYPE_STRING),
        _field("version", 2, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value", oneof_index=0),
        _field("version_label", 4, _F.TYPE_STRING, oneof_index=0),
        _field("signature_name", 3, _F.TYPE_STRING),
    ])

    predict = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/apis/predict.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["tensorflow/core/framework/tensor.proto", "tensorflow_serving/apis/model.proto"])
    req = predict.message_type.add(name="PredictRequest")
    req.nested_type.append(_map_entry("InputsEntry", ".tensorflow.TensorProto"))
    req.field.extend([
        _field("model_spec", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.ModelSpec"),
        _field("inputs", 2, _F.TYPE_MESSAGE, ".tensorflow.serving.PredictRequest.InputsEntry",
               label=_F.LABEL_REPEATED),
        _field("output_filter", 3, _F.TYPE_STRING, label=_F.LABEL_REPEATED),
    ])
    resp = predict.message_type.add(name="PredictResponse")
    resp.nested_type.append(_map_entry("OutputsEntry", ".tensorflow.TensorProto"))
    resp.field.extend([
        _field("model_spec", 2, _F.TYPE_MESSAGE, ".tensorflow.serving.ModelSpec"),
        _field("outputs", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PredictResponse.OutputsEntry",
               label=_F.LABEL_REPEATED),
    ])

    plog = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/apis/prediction_log.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["tensorflow_serving/apis/predict.proto"])
    log = plog.message_type.add(name="PredictLog")
    log.field.extend([
        _field("request", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PredictRequest"),
        _field("response", 2, _F.TYPE_MESSAGE, ".tensorflow.serving.PredictResponse"),
    ])
    plm = plog.message_type.add(name="PredictionLog")
    plm.oneof_decl.add(name="log_type")
    # Fields 1-5 and 7 (log_metadata, classify/regress/multi-inference/session-run/
    # streamed logs) are not declared: cxr_tf never writes them, and a parser keeps
    # them as unknown fields.
    plm.field.append(_field("predict_log", 6, _F.TYPE_MESSAGE, ".tensorflow.serving.PredictLog",
                            oneof_index=0))
    return [model, predict, plog]


def _add_with_deps(pool, fd, seen):
    if fd.name in seen:
        return
    for dep in fd.dependencies:
        _add_with_deps(pool, dep, seen)
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    pool.AddSerializedFile(proto.SerializeToString())
    seen.add(fd.name)


@functools.lru_cache(maxsize=1)
def serving_messages() -> types.SimpleNamespace:
    """The message classes ``ModelSpec``, ``PredictRequest``, ``PredictResponse``,
    ``PredictLog`` and ``PredictionLog`` (official ones when installed).

    Returns:
        A namespace with those five classes plus ``TensorProto`` (the one their
        ``inputs`` map holds) and ``official`` (bool).
    """
    try:  # the real thing, when tensorflow-serving-api happens to be installed
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

        return types.SimpleNamespace(
            ModelSpec=model_pb2.ModelSpec, PredictRequest=predict_pb2.PredictRequest,
            PredictResponse=predict_pb2.PredictResponse, PredictLog=prediction_log_pb2.PredictLog,
            PredictionLog=prediction_log_pb2.PredictionLog, TensorProto=tensor_pb2.TensorProto,
            official=True)
    except ImportError:
        pass
    pool = descriptor_pool.DescriptorPool()
    seen: set[str] = set()
    _add_with_deps(pool, wrappers_pb2.DESCRIPTOR, seen)
    _add_with_deps(pool, tensor_pb2.DESCRIPTOR, seen)
    for fdp in _serving_files():
        pool.AddSerializedFile(fdp.SerializeToString())

    def cls(name):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    return types.SimpleNamespace(
        ModelSpec=cls("tensorflow.serving.ModelSpec"),
        PredictRequest=cls("tensorflow.serving.PredictRequest"),
        PredictResponse=cls("tensorflow.serving.PredictResponse"),
        PredictLog=cls("tensorflow.serving.PredictLog"),
        PredictionLog=cls("tensorflow.serving.PredictionLog"),
        TensorProto=cls("tensorflow.TensorProto"),
        official=False)


def make_predict_log(model_name: str, signature_name: str, inputs: dict[str, np.ndarray]) -> bytes:
    """Serialize one ``PredictionLog`` holding a ``PredictRequest``.

    Args:
        model_name: the servable name (``ModelSpec.name``).
        signature_name: the signature the request targets.
        inputs: input key -> array (``object``/bytes arrays become DT_STRING tensors).

    Returns:
        The serialized ``PredictionLog`` (one TFRecord of a warm-up file).
    """
    m = serving_messages()
    log = m.PredictionLog()
    req = log.predict_log.request
    req.model_spec.name = model_name
    req.model_spec.signature_name = signature_name
    for key, value in inputs.items():
        # tf.make_tensor_proto yields TensorFlow's own TensorProto class; the runtime
        # classes use a twin in a private pool, so copy through the wire format.
        req.inputs[key].MergeFromString(tf.make_tensor_proto(value).SerializeToString())
    return log.SerializeToString()


def read_warmup_file(path) -> list[dict]:
    """Parse a ``tf_serving_warmup_requests`` file.

    Args:
        path: the TFRecord file.

    Returns:
        One dict per record: ``model_name``, ``signature_name`` and ``inputs``
        (input key -> numpy array).
    """
    m = serving_messages()
    out = []
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        log = m.PredictionLog.FromString(record)
        req = log.predict_log.request
        inputs = {k: tf.make_ndarray(tensor_pb2.TensorProto.FromString(v.SerializeToString()))
                  for k, v in req.inputs.items()}
        out.append({"model_name": req.model_spec.name,
                    "signature_name": req.model_spec.signature_name, "inputs": inputs})
    return out
