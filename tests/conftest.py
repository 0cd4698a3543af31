import jax

# Layout bugs surface as rank-promotion errors instead of silent broadcasting.
jax.config.update("jax_numpy_rank_promotion", "raise")
