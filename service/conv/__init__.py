"""``/v1/conv/{op}``: TensorFlow's conv2d, depthwise_conv2d and separable_conv2d, run by ONNX Runtime.

One job per module, dependencies pointing one way (``engine`` -> ``request`` -> ``codec``; ``engine`` -> ``cache``):

* :mod:`.codec` — tensors as nested JSON lists or base64 (peek a shape, decode, encode), JSON with NaN/Infinity;
* :mod:`.request` — the body read once into a :class:`~.request.ConvCall`, every limit checked from declared
  shapes (cheapest first) before anything is decoded or compiled;
* :mod:`.cache` — the LRU of compiled sessions, one per :class:`~sepconv.export.single_op.ConvKey`;
* :mod:`.engine` — build (``sepconv.export.single_op``) and compile the graph, run it, write the response.

The HTTP route is :mod:`sepconv.service.rest.conv`.
"""
