import jax

# Data-parallel tests shard over 8 virtual CPU devices; unsharded work stays on device 0.
jax.config.update("jax_num_cpu_devices", 8)
# Layout bugs surface as rank-promotion errors instead of silent broadcasting.
jax.config.update("jax_numpy_rank_promotion", "raise")
