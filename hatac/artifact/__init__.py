"""The saved artifact: save, load and replay (:mod:`.store`) and the manifest schema (:mod:`.manifest`)."""
