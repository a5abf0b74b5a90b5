"""The model repository: its rules (:mod:`.layout`), writing models into it (:mod:`.writer`) and the catalog of
default models (:mod:`.catalog`)."""
