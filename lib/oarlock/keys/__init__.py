"""The platform side of updateKeys: where refreshed credentials are persisted."""

from oarlock.keys.store import KeyStore, StoredCredential, apply_update_keys, open_store

__all__ = ["KeyStore", "StoredCredential", "apply_update_keys", "open_store"]
