-- KEYS[1] clock. Returns the backend's clock in milliseconds.
--#include _time
return tta_now(KEYS[1])
