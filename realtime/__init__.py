"""The live app runtime: camera, loop threads and queues, the live processor (tracking, smoothing), sinks."""
