//! `bindgen!` output for the three worlds of `wit/policy.wit`. Private: the crate re-exports
//! the types callers need. The `route` world generates the shared `types` and `host`
//! interfaces; the other two reuse them, so there is one `Request` type and one host trait.

pub(crate) mod route {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "route",
    });
}

pub(crate) mod authorize {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "authorize",
        with: {
            "tessera:policy/types": super::route::tessera::policy::types,
            "tessera:policy/host": super::route::tessera::policy::host,
        },
    });
}

pub(crate) mod eviction {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "eviction",
        with: {
            "tessera:policy/host": super::route::tessera::policy::host,
        },
    });
}
