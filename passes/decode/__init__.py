"""Runtime decode fusions: run by the static decode step on its own copy of the decode graph, chosen by
typed options; never saved with the artifact."""
