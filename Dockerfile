# syntax=docker/dockerfile:1
# Multi-stage: compile TypeScript, better-sqlite3 and the SRTP/GCM addon once; ship only
# the runtime, production dependencies and compiled output, running as a non-root user.
FROM node:20-bookworm-slim AS build
# node-gyp needs these for better-sqlite3 and native/ (the addon uses Node's own OpenSSL).
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY native ./native
RUN npm run build && npm run build:native && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# Every addon built: SRTP/GCM (gatehouse_native), the relay fast path (turn.fast_path), and the
# relay workers' SO_REUSEPORT sockets and key broker (gatehouse_reuseport, gatehouse_peercred).
COPY --from=build /src/native/build/Release/*.node ./native/build/Release/
COPY package.json ./
COPY bin ./bin
COPY rules ./rules
COPY deploy/gatehouse.yaml /etc/gatehouse/gatehouse.yaml
RUN mkdir -p /var/lib/gatehouse && chown node:node /var/lib/gatehouse
USER node
VOLUME ["/var/lib/gatehouse"]
# TURN (RFC 8656 §4: 3478 udp/tcp, 5349 tls), PCP (RFC 6887 §19: 5351/udp), admin API.
EXPOSE 3478/udp 3478/tcp 5349/tcp 5351/udp 8080/tcp
# The admin listener binds loopback by default; the healthcheck runs inside the container.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:8080/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["node", "bin/gatehouse.js"]
CMD ["serve", "--config", "/etc/gatehouse/gatehouse.yaml"]
