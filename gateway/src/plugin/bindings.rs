//! Host bindings generated from the plugin contract in `plugin-sdk/wit/`.
//!
//! `state` and `jwt` may do I/O (a shared store, a JWKS fetch), so their host functions are
//! async; wasmtime suspends the guest on its fiber while they wait and no worker blocks. The
//! exports are called asynchronously so epoch interruption can stop a runaway plugin.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit",
    world: "plugin",
    imports: {
        "llm-gateway:plugin/state": async | trappable,
        "llm-gateway:plugin/jwt": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub use llm_gateway::plugin::types;
