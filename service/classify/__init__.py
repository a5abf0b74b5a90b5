"""Images in, classes out: decode an image under limits (:mod:`.decode`), preprocess it the model's way and run it
through the data plane (:mod:`.engine`). The HTTP side is :mod:`sepconv.service.rest.classify`."""
