/* The DFA scan of gatehouse_native (native/dfa.c): adds dfaScan to exports. */
#ifndef GATEHOUSE_DFA_H
#define GATEHOUSE_DFA_H
#include <node_api.h>
int dfa_register(napi_env env, napi_value exports);
#endif
