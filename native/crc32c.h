/* The CRC32c part of gatehouse_native (native/crc32c.c): adds sctpChecksum to exports. */
#ifndef GATEHOUSE_CRC32C_H
#define GATEHOUSE_CRC32C_H
#include <node_api.h>
int crc32c_register(napi_env env, napi_value exports);
#endif
