import tempfile

import jax

# Data-parallel tests shard over 8 virtual CPU devices; unsharded work stays on device 0.
jax.config.update("jax_num_cpu_devices", 8)
# Layout bugs surface as rank-promotion errors instead of silent broadcasting.
jax.config.update("jax_numpy_rank_promotion", "raise")
# Many tests build the same program afresh (each fit() jits its own step): a compilation
# cache for this session compiles each program once. It starts empty, so the suite's time is
# that of a cold run, as in CI.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="deltajax-xla-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
