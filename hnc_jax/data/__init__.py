"""Input: tf.data over TFDS datasets and image folders (`pipeline`, the default backend), each
epoch's resumable record order (`records`), the Grain backend (`grain_pipeline`, with numpy/PIL
`host_transforms`), image folders (`folders`), image transforms and statistics, and the
embedded cluttered-digits dataset (`cluttered_digits`)."""
