# syntax=docker/dockerfile:1
#
# Moat: one image for all five services (screen, greylist, filter, quarantine, delivery).
# docker-compose.yml runs one container per service from it, each with its own command:
#
#   node apps/<name>/dist/main.js
#
# the same command the launcher and the tests run from the repo root. WORKDIR /app is that root.
# Stages: manifests (package.json files only, so `npm ci` is cached until a dependency changes),
# build (all dependencies, tsc through turbo), prod-deps (a clean production install),
# runtime (production node_modules + every workspace's package.json + every dist/, non-root).

# --- manifests: the package.json files and the lockfile, nothing else -------------------------
FROM node:22-bookworm-slim AS manifests
WORKDIR /app
COPY . .
RUN find . -type f ! -name package.json ! -name package-lock.json ! -name .npmrc -delete \
 && find . -mindepth 1 -type d -empty -delete

# --- build: npm ci + turbo build of every app and the packages it depends on ---------------
FROM node:22-bookworm-slim AS build
WORKDIR /app
ENV TURBO_TELEMETRY_DISABLED=1 \
    NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_FUND=false
# python3, make and g++: node-gyp builds @moat/handover's small N-API addon (packages/handover/native)
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY --from=manifests /app ./
RUN npm ci --no-audit
COPY . .
# Every app under apps/ plus, through turbo's ^build, every package it imports.
RUN npx turbo run build --filter='./apps/*' --output-logs=errors-only
# Collect only the compiled output and shipped data files (apps/greylist/lists: the default pool
# whitelist; packages/handover's native addon), laid out as in the repo (apps/<name>/dist,
# packages/<name>/dist, packages/handover/native/build/Release/handover.node).
RUN mkdir -p /out/apps /out/packages \
 && for d in apps/* packages/*; do \
      if [ -d "$d/dist" ]; then mkdir -p "/out/$d" && cp -a "$d/dist" "/out/$d/dist"; fi; \
      if [ -d "$d/lists" ]; then cp -a "$d/lists" "/out/$d/lists"; fi; \
      if [ -d "$d/native/build/Release" ]; then \
        mkdir -p "/out/$d/native/build/Release" && cp -a "$d"/native/build/Release/*.node "/out/$d/native/build/Release/"; \
      fi; \
    done

# --- prod-deps: a clean production install (no dev dependencies) ---------------------------
FROM node:22-bookworm-slim AS prod-deps
WORKDIR /app
ENV NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_FUND=false
COPY --from=manifests /app ./
RUN npm ci --omit=dev --no-audit \
 && npm cache clean --force

# --- runtime ----------------------------------------------------------------------------------
FROM node:22-bookworm-slim AS runtime
ENV NODE_ENV=production \
    NODE_OPTIONS=--max-semi-space-size=32
WORKDIR /app
# package.json of the root and of every workspace, the lockfile, production node_modules
# (workspace links included: node_modules/@moat/* -> ../../packages/*, ../../apps/*)
COPY --from=prod-deps /app ./
# every dist/: apps/<name>/dist/main.js for each service, packages/<name>/dist for what they import
COPY --from=build /out/apps ./apps
COPY --from=build /out/packages ./packages
# State lives under /data (MOAT_DATA_DIR in compose). The folders compose mounts named volumes on
# exist here owned by the runtime user, so a fresh volume is created writable by it.
RUN mkdir -p /data/run /data/tls /data/queue /data/mail /data/quarantine /data/filter \
 && chown -R node:node /data
# The node image's unprivileged user (uid 1000). Screen listens on 2525; compose maps 25 to it.
USER node
EXPOSE 2525 10023 10024 10025 10026 8080
# Harmless default: prints the effective configuration and exits. Compose sets `command` per service.
CMD ["node", "apps/screen/dist/main.js", "--print-config"]
