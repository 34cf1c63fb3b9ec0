"""Runtime: model manager, job queue, history store, output writer (above pipelines, below api)."""
