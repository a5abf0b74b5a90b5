"""The REST transport: HTTP only. Routes (:mod:`.v2`, :mod:`.ops`, and the conv / profiling route modules),
the infer shortcut (:mod:`.fastpath`), codecs (:mod:`.codec`), bodies (:mod:`.body`), middleware
(:mod:`.middleware`), collaborators for routes (:mod:`.deps`) and the one error-to-status table
(:mod:`.errors`). Status codes and HTTP headers are decided here and nowhere below."""
