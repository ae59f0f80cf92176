{
  "targets": [
    {
      "target_name": "gatehouse_native",
      "sources": ["srtp_openssl.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_DISABLE_CPP_EXCEPTIONS"]
    }
  ]
}
