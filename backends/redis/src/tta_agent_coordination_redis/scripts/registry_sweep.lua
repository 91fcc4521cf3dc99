-- sweep: detect expired agents and emit their expired events; returns how many.
--#include registry_lib
return expire(now_us())
