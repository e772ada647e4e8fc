"""The extraction stage: prepare dataset stores and run frozen backbones once into feature stores."""
