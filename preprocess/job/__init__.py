"""The Ray job that turns images + pairs into shards: inputs, decode, resize, feature cache, pair join."""
