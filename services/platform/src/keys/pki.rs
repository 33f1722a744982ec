//! Service certificates from Vault PKI.
