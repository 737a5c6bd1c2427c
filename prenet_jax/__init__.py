"""prenet-jax: 4D-PreNet preprocessing of 4D-STEM data in JAX/Flax."""
