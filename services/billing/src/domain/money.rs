//! Money: integer minor units of an ISO 4217 currency, never floats.

/// A currency billing accepts, with its minor-unit exponent (ISO 4217).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Currency {
    pub code: &'static str,
    pub exponent: u8,
}

/// The currencies billing accepts: those a card processor settles in the practice's markets.
/// A code outside the list is refused rather than guessed at (a wrong exponent would charge a
/// hundred times too much or too little).
const CURRENCIES: &[Currency] = &[
    Currency {
        code: "USD",
        exponent: 2,
    },
    Currency {
        code: "EUR",
        exponent: 2,
    },
    Currency {
        code: "GBP",
        exponent: 2,
    },
    Currency {
        code: "CAD",
        exponent: 2,
    },
    Currency {
        code: "AUD",
        exponent: 2,
    },
    Currency {
        code: "NZD",
        exponent: 2,
    },
    Currency {
        code: "CHF",
        exponent: 2,
    },
    Currency {
        code: "SEK",
        exponent: 2,
    },
    Currency {
        code: "NOK",
        exponent: 2,
    },
    Currency {
        code: "DKK",
        exponent: 2,
    },
    Currency {
        code: "PLN",
        exponent: 2,
    },
    Currency {
        code: "MXN",
        exponent: 2,
    },
    Currency {
        code: "BRL",
        exponent: 2,
    },
    Currency {
        code: "INR",
        exponent: 2,
    },
    Currency {
        code: "SGD",
        exponent: 2,
    },
    Currency {
        code: "HKD",
        exponent: 2,
    },
    Currency {
        code: "JPY",
        exponent: 0,
    },
    Currency {
        code: "KRW",
        exponent: 0,
    },
    Currency {
        code: "ISK",
        exponent: 0,
    },
    Currency {
        code: "BHD",
        exponent: 3,
    },
    Currency {
        code: "KWD",
        exponent: 3,
    },
    Currency {
        code: "JOD",
        exponent: 3,
    },
];

/// The largest amount of one price, invoice line or payment, in minor units: large enough for
/// any visit, small enough that sums of many lines cannot overflow.
pub const MAX_AMOUNT_MINOR: i64 = 100_000_000;

impl Currency {
    /// The currency for an upper-case ISO 4217 code billing accepts.
    pub fn parse(code: &str) -> Option<Currency> {
        CURRENCIES.iter().copied().find(|c| c.code == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_exact_and_exponents_right() {
        assert_eq!(Currency::parse("USD").map(|c| c.exponent), Some(2));
        assert_eq!(Currency::parse("JPY").map(|c| c.exponent), Some(0));
        assert_eq!(Currency::parse("KWD").map(|c| c.exponent), Some(3));
        for bad in ["usd", "US", "USDX", "", "XXX"] {
            assert_eq!(Currency::parse(bad), None, "{bad}");
        }
    }
}
