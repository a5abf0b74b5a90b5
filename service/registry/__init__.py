"""The model repository: what is on disk (:mod:`.scan`, Triton's layout; :mod:`.model_config` and
:mod:`.pbtxt` for ``config.pbtxt``) apart from what is loaded (:mod:`.registry`: versions and their states;
:mod:`.model`: :class:`~sepconv.service.registry.model.LoadedModel`)."""
