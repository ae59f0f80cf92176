/* The TLS 1.2 PRF part of gatehouse_native (native/prf.c): adds tls12Prf to exports. */
#ifndef GATEHOUSE_PRF_H
#define GATEHOUSE_PRF_H
#include <node_api.h>
int prf_register(napi_env env, napi_value exports);
#endif
