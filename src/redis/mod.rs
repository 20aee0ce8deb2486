//! `RedisStorage`: the production storage (feature `redis`). Work in progress.
