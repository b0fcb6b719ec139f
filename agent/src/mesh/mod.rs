pub mod http_provider;
