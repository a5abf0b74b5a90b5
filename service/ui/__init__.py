"""The model page's server side: the latest profile and sweep kept for it (:mod:`.latest`) and its charts,
rendered as SVG on the server (:mod:`.charts`). The routes are in :mod:`sepconv.service.rest.ops`."""
