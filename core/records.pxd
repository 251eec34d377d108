# Record layouts and result codes: the C-level contract of the ledger.
#
# Every struct here is 128 bytes, little-endian, packed, and documented field by field in
# docs/data-model.md; records.pyx checks the sizes and offsets against the NumPy dtypes at import.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from * nogil:
    """
    #if defined(__GNUC__)
    #define TALLY_PACKED __attribute__((packed))
    #define TALLY_LIKELY(x) __builtin_expect(!!(x), 1)
    #define TALLY_UNLIKELY(x) __builtin_expect(!!(x), 0)
    #define TALLY_PREFETCH(p) __builtin_prefetch((p), 1, 3)
    #else
    #define TALLY_PACKED
    #define TALLY_LIKELY(x) (x)
    #define TALLY_UNLIKELY(x) (x)
    #define TALLY_PREFETCH(p) ((void)0)
    #endif

    /* Copy `size` bytes (a multiple of 16, both 16-byte aligned) with non-temporal stores:
       the destination's cache lines are not read first. tally_store_fence() orders them. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    static inline void tally_stream_store(void *dst, const void *src, size_t size) {
        for (size_t i = 0; i < size; i += 16)
            _mm_stream_si128((__m128i *)((char *)dst + i), _mm_loadu_si128((const __m128i *)((const char *)src + i)));
    }
    static inline void tally_store_fence(void) { _mm_sfence(); }
    #else
    #include <string.h>
    static inline void tally_stream_store(void *dst, const void *src, size_t size) { memcpy(dst, src, size); }
    static inline void tally_store_fence(void) {}
    #endif

    /* Large arrays (the tables, the maps) are calloc'd and mostly never touched. glibc's dynamic
       mmap threshold rises to the size of the largest block freed (up to 32 MiB), after which
       such arrays come from the heap: calloc zeroes (touches) them and free keeps the pages, so a
       process that makes and drops machines (tests, replay) grew by gigabytes. A fixed threshold
       keeps every block above 128 KiB lazily mapped and returned when freed. */
    #if defined(__GLIBC__)
    #include <malloc.h>
    static void tally_fix_mmap_threshold(void) { mallopt(M_MMAP_THRESHOLD, 128 * 1024); }
    #else
    static void tally_fix_mmap_threshold(void) {}
    #endif

    /* Write every page once (volatile: the compiler must not drop the no-op store), after
       asking for transparent huge pages where the kernel gives them on request (THP "madvise"):
       a table touched at random costs a TLB miss per access with 4 KiB pages. */
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    static void tally_touch_pages(void *data, size_t size) {
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        const uintptr_t huge = (uintptr_t) 1 << 21;
        uintptr_t first = ((uintptr_t) data + huge - 1) & ~(huge - 1);
        uintptr_t last = ((uintptr_t) data + size) & ~(huge - 1);
        if (last > first)
            madvise((void *) first, last - first, MADV_HUGEPAGE);
    #endif
        volatile unsigned char *bytes = (volatile unsigned char *) data;
        for (size_t i = 0; i < size; i += 4096) bytes[i] = bytes[i];
    }

    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* account id, not 0, not 2^128-1 */
        uint64_t debits_pending;        /* minor units reserved by pending debits */
        uint64_t debits_posted;         /* minor units debited */
        uint64_t credits_pending;       /* minor units reserved by pending credits */
        uint64_t credits_posted;        /* minor units credited */
        uint64_t user_data_128_lo, user_data_128_hi;
        uint64_t user_data_64;
        uint32_t user_data_32;
        uint32_t ledger;                /* ISO 4217 numeric currency */
        uint16_t code;                  /* account kind */
        uint16_t flags;                 /* account_flag_t */
        uint8_t reserved[36];           /* must be zero */
        uint64_t timestamp;             /* engine time of creation, ns */
    } tally_account_t;

    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* transfer id: the idempotency key */
        uint64_t debit_account_id_lo, debit_account_id_hi;
        uint64_t credit_account_id_lo, credit_account_id_hi;
        uint64_t amount;                /* minor units */
        uint64_t pending_id_lo, pending_id_hi;
        uint64_t user_data_128_lo, user_data_128_hi;
        uint64_t user_data_64;
        uint32_t user_data_32;
        uint32_t timeout;               /* seconds, pending transfers only */
        uint32_t ledger;                /* ISO 4217 numeric currency */
        uint16_t code;                  /* transfer kind */
        uint16_t flags;                 /* transfer_flag_t */
        uint8_t reserved[8];            /* must be zero */
        uint64_t timestamp;             /* engine time, ns, strictly increasing */
    } tally_transfer_t;

    /* The orders' records (docs/products.md "Orders: the reference"). */
    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* order_id(merchant_id, out_trade_no) */
        uint64_t merchant_id_lo, merchant_id_hi;
        uint64_t amount;                /* minor units */
        uint8_t out_trade_no[32];       /* the merchant's order number, NUL-padded */
        uint32_t expire_after_s;        /* 0: ORDER_EXPIRE_AFTER_S_DEFAULT */
        uint32_t ledger;
        uint32_t description_code;
        uint16_t flags;                 /* must be zero */
        uint8_t reserved[34];
        uint64_t timestamp;             /* must be zero */
    } tally_order_create_t;

    typedef struct TALLY_PACKED {
        uint64_t order_id_lo, order_id_hi;
        uint64_t payer_id_lo, payer_id_hi;
        uint64_t amount;                /* must equal the order's */
        uint8_t token[10];              /* the order's tag (from its QR payload) */
        uint8_t reserved_a[2];
        uint32_t ledger;                /* must equal the order's */
        uint16_t flags;                 /* must be zero */
        uint8_t reserved[62];
        uint64_t timestamp;             /* must be zero */
    } tally_order_pay_t;

    typedef struct TALLY_PACKED {
        uint64_t order_id_lo, order_id_hi;
        uint64_t merchant_id_lo, merchant_id_hi;
        uint16_t flags;                 /* must be zero (but the server's EVENT_FLAG_FORBIDDEN) */
        uint8_t reserved[86];
        uint64_t timestamp;             /* must be zero */
    } tally_order_close_t;

    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;
        uint64_t merchant_id_lo, merchant_id_hi;
        uint64_t payer_id_lo, payer_id_hi;  /* 0 until paid */
        uint64_t amount;
        uint64_t refunded;
        uint64_t expires_at;            /* engine ns */
        uint64_t paid_at;
        uint64_t closed_at;
        uint8_t token[10];
        uint8_t state;                  /* order_state_t */
        uint8_t close_reason;           /* close_reason_t */
        uint16_t refund_count;
        uint8_t kind;                   /* order_kind_t: a QR order, or a payment code's charge */
        uint8_t reserved_a[1];
        uint32_t ledger;
        uint32_t description_code;
        uint64_t fee;
        uint64_t timestamp;             /* engine ns of creation */
    } tally_order_t;

    typedef struct TALLY_PACKED {
        uint32_t result;
        uint8_t token[10];
        uint8_t reserved[2];
    } tally_order_created_t;

    /* A merchant's terms (docs/products.md "Merchants and fees"). */
    typedef struct TALLY_PACKED {
        uint64_t merchant_id_lo, merchant_id_hi;        /* the merchant's wallet account */
        uint64_t fee_account_id_lo, fee_account_id_hi;  /* where its fees go */
        uint64_t settlement_account_id_lo, settlement_account_id_hi;  /* its bank account; 0: none */
        uint16_t fee_bps;               /* fee rate, basis points: 0..10,000 */
        uint16_t flags;                 /* merchant_flag_t: MERCHANT_MEMBERSHIP, or zero */
        uint32_t ledger;                /* the merchant's currency */
        uint64_t award_stock_id_lo, award_stock_id_hi;  /* pay and get: a coupon of this stock per payment (0: none) */
        uint64_t award_min_amount;      /* ... of at least this much */
        uint8_t reserved[40];
        uint64_t timestamp;             /* 0 on input; the engine time of the last change */
    } tally_merchant_t;

    /* A coupon payment as kept: its request's record (docs/products.md "Coupons and the card pack"). */
    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* coupon_payment_id(payer_id, request_id) */
        uint64_t payer_id_lo, payer_id_hi;
        uint64_t merchant_id_lo, merchant_id_hi;
        uint64_t coupon_id_lo, coupon_id_hi;
        uint64_t stock_id_lo, stock_id_hi;
        uint64_t request_id_lo, request_id_hi;
        uint64_t price;
        uint64_t face_value;            /* what the budget paid */
        uint32_t ledger;
        uint8_t reserved[4];
        uint64_t timestamp;             /* paid at */
    } tally_coupon_payment_t;

    /* A member of a merchant's membership card: joined at the first payment (docs/products.md
       "Coupons and the card pack"). */
    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* member_id(merchant_id, user_id) */
        uint64_t merchant_id_lo, merchant_id_hi;
        uint64_t user_id_lo, user_id_hi;
        uint64_t spend;                 /* minor units paid at the merchant since joining */
        uint64_t points;                /* 1 per 100 minor units of each payment */
        uint64_t last_visit_at;
        uint32_t visits;
        uint8_t reserved[44];
        uint64_t timestamp;             /* joined at */
    } tally_member_t;

    /* The limits in force (core/limits.pyx, docs/storage.md "Capacities and limits"): 0 leaves one as it is. */
    typedef struct TALLY_PACKED {
        uint64_t accounts;
        uint64_t pending;
        uint64_t merchants;
        uint64_t orders_open;
        uint64_t codes_live;
        uint16_t flags;                 /* must be zero */
        uint8_t reserved_a[6];
        uint64_t envelopes_open;
        uint64_t envelope_total;        /* a packet's total at most (minor units): a policy, not a capacity */
        uint64_t stocks_open;
        uint8_t reserved[48];
        uint64_t timestamp;             /* must be zero */
    } tally_limits_t;

    /* Payment codes (docs/products.md "Payment codes (built)"). */
    typedef struct TALLY_PACKED {
        uint64_t wallet_id_lo, wallet_id_hi;
        uint64_t request_id_lo, request_id_hi;  /* non-zero: the wallet service's id of the request */
        uint64_t no_password_limit;     /* minor units; a charge above it needs confirming (0: default) */
        uint32_t free_payments_per_day; /* code payments a day without confirming (0: default) */
        uint32_t ledger;                /* the wallet's */
        uint16_t flags;                 /* must be zero */
        uint8_t reserved[70];
        uint64_t timestamp;             /* must be zero */
    } tally_code_issue_t;

    typedef struct TALLY_PACKED {
        uint32_t result;
        uint8_t reserved[4];
        uint64_t code;                  /* on ok and exists */
    } tally_code_issued_t;

    typedef struct TALLY_PACKED {
        uint64_t order_id_lo, order_id_hi;      /* order_id(merchant_id, out_trade_no) */
        uint64_t merchant_id_lo, merchant_id_hi;
        uint64_t code_lo, code_hi;      /* the 18-digit code (hi 0) */
        uint64_t amount;
        uint8_t out_trade_no[32];
        uint32_t ledger;
        uint32_t description_code;
        uint16_t flags;                 /* must be zero (but the server's EVENT_FLAG_FORBIDDEN) */
        uint8_t reserved[22];
        uint64_t timestamp;             /* must be zero */
    } tally_code_charge_t;

    typedef struct TALLY_PACKED {
        uint64_t order_id_lo, order_id_hi;
        uint64_t wallet_id_lo, wallet_id_hi;    /* the order's payer */
        uint16_t flags;                 /* 0: confirm; CONFIRM_DECLINE: decline */
        uint8_t reserved[86];
        uint64_t timestamp;             /* must be zero */
    } tally_code_confirm_t;

    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* the code (hi 0) */
        uint64_t wallet_id_lo, wallet_id_hi;
        uint64_t request_id_lo, request_id_hi;
        uint64_t order_id_lo, order_id_hi;      /* its charge's order: 0 before */
        uint64_t no_password_limit;
        uint64_t expires_at;            /* engine ns */
        uint64_t ended_at;              /* charged, expired or replaced at (engine ns) */
        uint32_t free_payments_per_day;
        uint32_t ledger;
        uint8_t state;                  /* code_state_t */
        uint8_t reserved[23];
        uint64_t timestamp;             /* issued at */
    } tally_code_t;

    /* Red envelopes (docs/products.md "Red envelopes"). */
    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* envelope_id(sender_id, out_envelope_no) */
        uint64_t sender_id_lo, sender_id_hi;
        uint64_t escrow_id_lo, escrow_id_hi;    /* an escrow account (code 4) of the ledger */
        uint64_t total;                 /* minor units */
        uint8_t out_envelope_no[32];    /* the sender service's number, NUL-padded */
        uint32_t count;                 /* shares: 1..ENVELOPE_COUNT_MAX, at most total */
        uint32_t ledger;
        uint32_t expire_after_s;        /* 0: 86,400 */
        uint32_t description_code;      /* the sender's greeting or theme */
        uint16_t flags;                 /* must be zero (but the server's EVENT_FLAG_FORBIDDEN) */
        uint8_t reserved[14];
        uint64_t timestamp;             /* must be zero */
    } tally_envelope_send_t;

    typedef struct TALLY_PACKED {
        uint64_t envelope_id_lo, envelope_id_hi;
        uint64_t claimer_id_lo, claimer_id_hi;
        uint16_t flags;                 /* must be zero (but the server's EVENT_FLAG_FORBIDDEN) */
        uint8_t reserved[86];
        uint64_t timestamp;             /* must be zero */
    } tally_envelope_claim_t;

    typedef struct TALLY_PACKED {
        uint32_t result;
        uint32_t position;              /* the claim's place (0 first): on ok and exists */
        uint64_t amount;                /* the share: on ok and exists */
    } tally_envelope_claimed_t;

    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;
        uint64_t sender_id_lo, sender_id_hi;
        uint64_t escrow_id_lo, escrow_id_hi;
        uint64_t total;
        uint64_t remaining;             /* not yet claimed (nor refunded) */
        uint64_t expires_at;            /* engine ns */
        uint64_t ended_at;              /* emptied or refunded at (engine ns) */
        uint64_t refunded;              /* returned to the sender at expiry */
        uint32_t count;
        uint32_t claimed;
        uint32_t ledger;
        uint32_t description_code;
        uint8_t state;                  /* envelope_state_t */
        uint8_t reserved_a;
        uint16_t refund_result;         /* REFUND_FAILED: the refund leg's result */
        uint8_t reserved[12];
        uint64_t timestamp;             /* sent at */
    } tally_envelope_t;

    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* claim_id(envelope_id, claimer_id) */
        uint64_t envelope_id_lo, envelope_id_hi;
        uint64_t claimer_id_lo, claimer_id_hi;
        uint64_t transfer_id_lo, transfer_id_hi;  /* its leg: escrow -> claimer */
        uint64_t amount;
        uint32_t position;
        uint32_t ledger;
        uint8_t reserved[40];
        uint64_t timestamp;             /* claimed at */
    } tally_claim_t;

    /* Coupons and the card pack (docs/products.md "Coupons and the card pack"). */
    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* stock_id(merchant_id, out_stock_no) */
        uint64_t merchant_id_lo, merchant_id_hi;
        uint64_t budget_account_id_lo, budget_account_id_hi;  /* code 7, the merchant's ledger */
        uint64_t face_value;            /* minor units */
        uint64_t min_spend;             /* minor units, >= face_value */
        uint8_t out_stock_no[32];
        uint32_t total_count;
        uint32_t per_user_max;          /* 0: 1 */
        uint32_t valid_for_s;           /* the stock ends this long after its creation */
        uint32_t coupon_valid_s;        /* a coupon's life after receipt (0: until the stock ends) */
        uint32_t ledger;
        uint16_t flags;                 /* must be zero (but the server's EVENT_FLAG_FORBIDDEN) */
        uint8_t reserved[2];
        uint64_t timestamp;             /* must be zero */
    } tally_stock_create_t;

    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;
        uint64_t merchant_id_lo, merchant_id_hi;
        uint64_t budget_account_id_lo, budget_account_id_hi;
        uint64_t face_value;
        uint64_t min_spend;
        uint64_t ends_at;               /* engine ns */
        uint32_t total_count;
        uint32_t per_user_max;
        uint32_t coupon_valid_s;
        uint32_t ledger;
        uint32_t issued_scan;           /* the analytics: coupons issued by channel, */
        uint32_t issued_api;
        uint32_t issued_pay_and_get;
        uint32_t redeemed;              /* redeemed, */
        uint32_t receivers;             /* distinct users who received one, */
        uint32_t repeat_buyers;         /* users who redeemed a second */
        uint8_t state;                  /* stock_state_t */
        uint8_t reserved_a;
        uint16_t end_result;            /* the end's leg result when it was refused (0: none) */
        uint8_t reserved[4];
        uint64_t timestamp;             /* created at */
    } tally_stock_t;

    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* coupon_id(stock_id, user_id, request_id) */
        uint64_t stock_id_lo, stock_id_hi;
        uint64_t user_id_lo, user_id_hi;
        uint64_t request_id_lo, request_id_hi;
        uint64_t merchant_id_lo, merchant_id_hi;  /* the stock's (a merchant gateway names its own) */
        uint8_t channel;                /* coupon_channel_t: scan or api */
        uint8_t reserved_a;
        uint16_t flags;                 /* must be zero (but the server's EVENT_FLAG_FORBIDDEN) */
        uint8_t reserved[36];
        uint64_t timestamp;             /* must be zero */
    } tally_coupon_grant_t;

    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;
        uint64_t stock_id_lo, stock_id_hi;
        uint64_t user_id_lo, user_id_hi;
        uint64_t request_id_lo, request_id_hi;
        uint64_t payment_id_lo, payment_id_hi;  /* the payment that redeemed it (0: none) */
        uint64_t expires_at;            /* engine ns */
        uint64_t redeemed_at;
        uint64_t price;                 /* the redeeming payment's price */
        uint8_t channel;
        uint8_t state;                  /* coupon_state_t */
        uint8_t reserved[14];
        uint64_t timestamp;             /* received at */
    } tally_coupon_t;

    typedef struct TALLY_PACKED {
        uint64_t payer_id_lo, payer_id_hi;
        uint64_t merchant_id_lo, merchant_id_hi;
        uint64_t coupon_id_lo, coupon_id_hi;
        uint64_t stock_id_lo, stock_id_hi;
        uint64_t request_id_lo, request_id_hi;  /* the wallet service's: the payment's id from it */
        uint64_t price;                 /* minor units, before the discount */
        uint32_t ledger;
        uint16_t flags;                 /* must be zero (but the server's EVENT_FLAG_FORBIDDEN) */
        uint8_t reserved[26];
        uint64_t timestamp;             /* must be zero */
    } tally_coupon_pay_t;

    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* holding_id(stock_id, user_id) */
        uint64_t stock_id_lo, stock_id_hi;
        uint64_t user_id_lo, user_id_hi;
        uint32_t received;
        uint32_t redeemed;
        uint8_t reserved[64];
        uint64_t timestamp;             /* first received at */
    } tally_holding_t;

    /* Cross-border payments (docs/products.md "Cross-border payments"). */
    typedef struct TALLY_PACKED {
        uint32_t from_ledger;           /* the payer's currency */
        uint32_t to_ledger;             /* the merchant's */
        uint64_t rate_ppb;              /* to-minor units per 10^9 from-minor units */
        uint64_t pool_from_id_lo, pool_from_id_hi;  /* the FX pools (code 6), fixed at the pair's first rate */
        uint64_t pool_to_id_lo, pool_to_id_hi;
        uint32_t version;               /* 0 on input; kept: 1 + the rates set before for the pair */
        uint16_t flags;                 /* must be zero */
        uint8_t reserved_a[2];
        uint64_t updated_at;            /* 0 on input; kept */
        uint8_t reserved[56];
        uint64_t timestamp;             /* 0 on input; kept: the pair's first rate */
    } tally_fx_rate_t;

    typedef struct TALLY_PACKED {
        uint64_t payer_id_lo, payer_id_hi;
        uint64_t merchant_id_lo, merchant_id_hi;
        uint64_t request_id_lo, request_id_hi;  /* the wallet service's: the payment's id from it */
        uint64_t merchant_amount;       /* the merchant's currency, minor units */
        uint64_t payer_amount;          /* as quoted: ceil(merchant_amount x 10^9 / rate_ppb) */
        uint32_t rate_version;          /* the quoted rate's */
        uint32_t payer_ledger;
        uint32_t merchant_ledger;
        uint32_t description_code;
        uint16_t flags;                 /* must be zero (but the server's EVENT_FLAG_FORBIDDEN) */
        uint8_t reserved[38];
        uint64_t timestamp;             /* must be zero */
    } tally_fx_pay_t;

    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* fx_payment_id(payer_id, request_id) */
        uint64_t payer_id_lo, payer_id_hi;
        uint64_t merchant_id_lo, merchant_id_hi;
        uint64_t request_id_lo, request_id_hi;
        uint64_t payer_amount;
        uint64_t merchant_amount;
        uint64_t payer_refunded;
        uint64_t merchant_refunded;
        uint64_t rate_ppb;              /* locked at payment */
        uint32_t payer_ledger;
        uint32_t merchant_ledger;
        uint32_t rate_version;
        uint16_t refund_count;
        uint8_t reserved[2];
        uint64_t timestamp;             /* paid at */
    } tally_fx_payment_t;

    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* fx_refund_id(payment_id, request_id) */
        uint64_t payment_id_lo, payment_id_hi;
        uint64_t merchant_id_lo, merchant_id_hi;  /* the payment's: only it refunds */
        uint64_t request_id_lo, request_id_hi;
        uint64_t merchant_amount;       /* the merchant's currency */
        uint64_t payer_amount;          /* 0 on input; kept: what the payer got back, at the locked rate */
        uint16_t flags;                 /* must be zero (but the server's EVENT_FLAG_FORBIDDEN) */
        uint8_t reserved[38];
        uint64_t timestamp;             /* 0 on input; kept */
    } tally_fx_refund_t;

    /* A refund of (part of) a paid order: the event, and as kept (docs/products.md "Refunds"). */
    typedef struct TALLY_PACKED {
        uint64_t id_lo, id_hi;          /* refund_id(order_id, out_refund_no) */
        uint64_t order_id_lo, order_id_hi;
        uint64_t merchant_id_lo, merchant_id_hi;  /* must be the order's: only it refunds */
        uint64_t amount;                /* minor units */
        uint8_t out_refund_no[32];      /* the merchant's refund number, NUL-padded */
        uint32_t ledger;                /* the order's */
        uint16_t flags;                 /* must be zero */
        uint8_t reserved[2];
        uint64_t fee_refunded;          /* 0 on input; kept: the fee returned to the merchant */
        uint64_t payer_id_lo, payer_id_hi;  /* 0 on input; kept: who got the money back */
        uint64_t timestamp;             /* 0 on input; kept: when */
    } tally_refund_t;

    /* A settlement of a merchant's closed windows: the event, and as kept (docs/products.md
       "Settlement"). */
    typedef struct TALLY_PACKED {
        uint64_t merchant_id_lo, merchant_id_hi;  /* the merchant's wallet account */
        uint64_t window;                /* settle every window up to this one (engine ns / window) */
        uint32_t ledger;                /* the merchant's currency */
        uint16_t flags;                 /* must be zero */
        uint8_t reserved[2];
        uint64_t paid, refunded;        /* 0 on input; kept: what the windows settled hold */
        uint64_t fees, fees_returned;
        int64_t net;                    /* paid - refunded - fees + fees_returned */
        uint64_t transfer_id_lo, transfer_id_hi;  /* the transfer that moved it (0: none, net <= 0) */
        uint64_t settlement_account_id_lo, settlement_account_id_hi;
        uint8_t reserved_b[16];
        uint64_t timestamp;             /* 0 on input; kept: when */
    } tally_settlement_t;
    /* Wallet tiers and their limits (docs/products.md "Wallet limits and real-name tiers (built)"). */
    typedef struct TALLY_PACKED {
        uint64_t account_id_lo, account_id_hi;
        uint32_t ledger;                /* the account's */
        uint8_t tier;                   /* 0 none, 1 unverified, 2 verified, 3 bank-card linked */
        uint8_t reserved_a;
        uint16_t flags;                 /* must be zero */
        uint8_t reserved[96];
        uint64_t timestamp;             /* must be zero */
    } tally_wallet_tier_t;

    typedef struct TALLY_PACKED {
        uint32_t ledger;                /* 0: the defaults of every ledger without its own */
        uint8_t tier;                   /* 1..3 */
        uint8_t reserved_a;
        uint16_t flags;                 /* must be zero */
        uint64_t payment_limit;         /* minor units: one debit at most */
        uint64_t daily_limit;           /* debits of an engine day (UTC) */
        uint64_t yearly_limit;          /* debits of a calendar year (UTC) */
        uint64_t balance_limit;         /* what the wallet may hold */
        uint8_t reserved[80];
        uint64_t timestamp;             /* must be zero */
    } tally_tier_limits_t;

    typedef struct TALLY_PACKED {
        uint64_t account_id_lo, account_id_hi;
        uint32_t ledger;
        uint8_t tier;
        uint8_t reserved_a[3];
        uint64_t payment_limit, daily_limit, yearly_limit, balance_limit;  /* in force; 0 for tier 0 */
        uint32_t day;                   /* engine day of timestamp */
        uint32_t year;                  /* its calendar year */
        uint64_t day_spent, year_spent; /* debits counted in those windows */
        uint64_t tier_set_at;           /* engine ns; 0: never */
        uint8_t reserved[32];
        uint64_t timestamp;             /* the engine time the answer is as of */
    } tally_wallet_limits_t;
    """
    ctypedef struct tally_account_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t debits_pending
        uint64_t debits_posted
        uint64_t credits_pending
        uint64_t credits_posted
        uint64_t user_data_128_lo
        uint64_t user_data_128_hi
        uint64_t user_data_64
        uint32_t user_data_32
        uint32_t ledger
        uint16_t code
        uint16_t flags
        uint8_t reserved[36]
        uint64_t timestamp

    ctypedef struct tally_transfer_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t debit_account_id_lo
        uint64_t debit_account_id_hi
        uint64_t credit_account_id_lo
        uint64_t credit_account_id_hi
        uint64_t amount
        uint64_t pending_id_lo
        uint64_t pending_id_hi
        uint64_t user_data_128_lo
        uint64_t user_data_128_hi
        uint64_t user_data_64
        uint32_t user_data_32
        uint32_t timeout
        uint32_t ledger
        uint16_t code
        uint16_t flags
        uint8_t reserved[8]
        uint64_t timestamp

    ctypedef struct tally_order_create_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t amount
        uint8_t out_trade_no[32]
        uint32_t expire_after_s
        uint32_t ledger
        uint32_t description_code
        uint16_t flags
        uint8_t reserved[34]
        uint64_t timestamp

    ctypedef struct tally_order_pay_t:
        uint64_t order_id_lo
        uint64_t order_id_hi
        uint64_t payer_id_lo
        uint64_t payer_id_hi
        uint64_t amount
        uint8_t token[10]
        uint8_t reserved_a[2]
        uint32_t ledger
        uint16_t flags
        uint8_t reserved[62]
        uint64_t timestamp

    ctypedef struct tally_order_close_t:
        uint64_t order_id_lo
        uint64_t order_id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint16_t flags
        uint8_t reserved[86]
        uint64_t timestamp

    ctypedef struct tally_order_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t payer_id_lo
        uint64_t payer_id_hi
        uint64_t amount
        uint64_t refunded
        uint64_t expires_at
        uint64_t paid_at
        uint64_t closed_at
        uint8_t token[10]
        uint8_t state
        uint8_t close_reason
        uint16_t refund_count
        uint8_t kind
        uint8_t reserved_a[1]
        uint32_t ledger
        uint32_t description_code
        uint64_t fee
        uint64_t timestamp

    ctypedef struct tally_order_created_t:
        uint32_t result
        uint8_t token[10]
        uint8_t reserved[2]

    ctypedef struct tally_refund_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t order_id_lo
        uint64_t order_id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t amount
        uint8_t out_refund_no[32]
        uint32_t ledger
        uint16_t flags
        uint8_t reserved[2]
        uint64_t fee_refunded
        uint64_t payer_id_lo
        uint64_t payer_id_hi
        uint64_t timestamp

    ctypedef struct tally_settlement_t:
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t window
        uint32_t ledger
        uint16_t flags
        uint8_t reserved[2]
        uint64_t paid
        uint64_t refunded
        uint64_t fees
        uint64_t fees_returned
        int64_t net
        uint64_t transfer_id_lo
        uint64_t transfer_id_hi
        uint64_t settlement_account_id_lo
        uint64_t settlement_account_id_hi
        uint8_t reserved_b[16]
        uint64_t timestamp

    ctypedef struct tally_merchant_t:
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t fee_account_id_lo
        uint64_t fee_account_id_hi
        uint64_t settlement_account_id_lo
        uint64_t settlement_account_id_hi
        uint16_t fee_bps
        uint16_t flags
        uint32_t ledger
        uint64_t award_stock_id_lo
        uint64_t award_stock_id_hi
        uint64_t award_min_amount
        uint8_t reserved[40]
        uint64_t timestamp

    ctypedef struct tally_coupon_payment_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t payer_id_lo
        uint64_t payer_id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t coupon_id_lo
        uint64_t coupon_id_hi
        uint64_t stock_id_lo
        uint64_t stock_id_hi
        uint64_t request_id_lo
        uint64_t request_id_hi
        uint64_t price
        uint64_t face_value
        uint32_t ledger
        uint8_t reserved[4]
        uint64_t timestamp

    ctypedef struct tally_member_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t user_id_lo
        uint64_t user_id_hi
        uint64_t spend
        uint64_t points
        uint64_t last_visit_at
        uint32_t visits
        uint8_t reserved[44]
        uint64_t timestamp

    ctypedef struct tally_limits_t:
        uint64_t accounts
        uint64_t pending
        uint64_t merchants
        uint64_t orders_open
        uint64_t codes_live
        uint16_t flags
        uint8_t reserved_a[6]
        uint64_t envelopes_open
        uint64_t envelope_total
        uint64_t stocks_open
        uint8_t reserved[48]
        uint64_t timestamp

    ctypedef struct tally_code_issue_t:
        uint64_t wallet_id_lo
        uint64_t wallet_id_hi
        uint64_t request_id_lo
        uint64_t request_id_hi
        uint64_t no_password_limit
        uint32_t free_payments_per_day
        uint32_t ledger
        uint16_t flags
        uint8_t reserved[70]
        uint64_t timestamp

    ctypedef struct tally_code_issued_t:
        uint32_t result
        uint8_t reserved[4]
        uint64_t code

    ctypedef struct tally_code_charge_t:
        uint64_t order_id_lo
        uint64_t order_id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t code_lo
        uint64_t code_hi
        uint64_t amount
        uint8_t out_trade_no[32]
        uint32_t ledger
        uint32_t description_code
        uint16_t flags
        uint8_t reserved[22]
        uint64_t timestamp

    ctypedef struct tally_code_confirm_t:
        uint64_t order_id_lo
        uint64_t order_id_hi
        uint64_t wallet_id_lo
        uint64_t wallet_id_hi
        uint16_t flags
        uint8_t reserved[86]
        uint64_t timestamp

    ctypedef struct tally_code_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t wallet_id_lo
        uint64_t wallet_id_hi
        uint64_t request_id_lo
        uint64_t request_id_hi
        uint64_t order_id_lo
        uint64_t order_id_hi
        uint64_t no_password_limit
        uint64_t expires_at
        uint64_t ended_at
        uint32_t free_payments_per_day
        uint32_t ledger
        uint8_t state
        uint8_t reserved[23]
        uint64_t timestamp

    ctypedef struct tally_envelope_send_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t sender_id_lo
        uint64_t sender_id_hi
        uint64_t escrow_id_lo
        uint64_t escrow_id_hi
        uint64_t total
        uint8_t out_envelope_no[32]
        uint32_t count
        uint32_t ledger
        uint32_t expire_after_s
        uint32_t description_code
        uint16_t flags
        uint8_t reserved[14]
        uint64_t timestamp

    ctypedef struct tally_envelope_claim_t:
        uint64_t envelope_id_lo
        uint64_t envelope_id_hi
        uint64_t claimer_id_lo
        uint64_t claimer_id_hi
        uint16_t flags
        uint8_t reserved[86]
        uint64_t timestamp

    ctypedef struct tally_envelope_claimed_t:
        uint32_t result
        uint32_t position
        uint64_t amount

    ctypedef struct tally_envelope_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t sender_id_lo
        uint64_t sender_id_hi
        uint64_t escrow_id_lo
        uint64_t escrow_id_hi
        uint64_t total
        uint64_t remaining
        uint64_t expires_at
        uint64_t ended_at
        uint64_t refunded
        uint32_t count
        uint32_t claimed
        uint32_t ledger
        uint32_t description_code
        uint8_t state
        uint8_t reserved_a
        uint16_t refund_result
        uint8_t reserved[12]
        uint64_t timestamp

    ctypedef struct tally_claim_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t envelope_id_lo
        uint64_t envelope_id_hi
        uint64_t claimer_id_lo
        uint64_t claimer_id_hi
        uint64_t transfer_id_lo
        uint64_t transfer_id_hi
        uint64_t amount
        uint32_t position
        uint32_t ledger
        uint8_t reserved[40]
        uint64_t timestamp

    ctypedef struct tally_stock_create_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t budget_account_id_lo
        uint64_t budget_account_id_hi
        uint64_t face_value
        uint64_t min_spend
        uint8_t out_stock_no[32]
        uint32_t total_count
        uint32_t per_user_max
        uint32_t valid_for_s
        uint32_t coupon_valid_s
        uint32_t ledger
        uint16_t flags
        uint8_t reserved[2]
        uint64_t timestamp

    ctypedef struct tally_stock_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t budget_account_id_lo
        uint64_t budget_account_id_hi
        uint64_t face_value
        uint64_t min_spend
        uint64_t ends_at
        uint32_t total_count
        uint32_t per_user_max
        uint32_t coupon_valid_s
        uint32_t ledger
        uint32_t issued_scan
        uint32_t issued_api
        uint32_t issued_pay_and_get
        uint32_t redeemed
        uint32_t receivers
        uint32_t repeat_buyers
        uint8_t state
        uint8_t reserved_a
        uint16_t end_result
        uint8_t reserved[4]
        uint64_t timestamp

    ctypedef struct tally_coupon_grant_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t stock_id_lo
        uint64_t stock_id_hi
        uint64_t user_id_lo
        uint64_t user_id_hi
        uint64_t request_id_lo
        uint64_t request_id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint8_t channel
        uint8_t reserved_a
        uint16_t flags
        uint8_t reserved[36]
        uint64_t timestamp

    ctypedef struct tally_coupon_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t stock_id_lo
        uint64_t stock_id_hi
        uint64_t user_id_lo
        uint64_t user_id_hi
        uint64_t request_id_lo
        uint64_t request_id_hi
        uint64_t payment_id_lo
        uint64_t payment_id_hi
        uint64_t expires_at
        uint64_t redeemed_at
        uint64_t price
        uint8_t channel
        uint8_t state
        uint8_t reserved[14]
        uint64_t timestamp

    ctypedef struct tally_coupon_pay_t:
        uint64_t payer_id_lo
        uint64_t payer_id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t coupon_id_lo
        uint64_t coupon_id_hi
        uint64_t stock_id_lo
        uint64_t stock_id_hi
        uint64_t request_id_lo
        uint64_t request_id_hi
        uint64_t price
        uint32_t ledger
        uint16_t flags
        uint8_t reserved[26]
        uint64_t timestamp

    ctypedef struct tally_holding_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t stock_id_lo
        uint64_t stock_id_hi
        uint64_t user_id_lo
        uint64_t user_id_hi
        uint32_t received
        uint32_t redeemed
        uint8_t reserved[64]
        uint64_t timestamp

    ctypedef struct tally_fx_rate_t:
        uint32_t from_ledger
        uint32_t to_ledger
        uint64_t rate_ppb
        uint64_t pool_from_id_lo
        uint64_t pool_from_id_hi
        uint64_t pool_to_id_lo
        uint64_t pool_to_id_hi
        uint32_t version
        uint16_t flags
        uint8_t reserved_a[2]
        uint64_t updated_at
        uint8_t reserved[56]
        uint64_t timestamp

    ctypedef struct tally_fx_pay_t:
        uint64_t payer_id_lo
        uint64_t payer_id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t request_id_lo
        uint64_t request_id_hi
        uint64_t merchant_amount
        uint64_t payer_amount
        uint32_t rate_version
        uint32_t payer_ledger
        uint32_t merchant_ledger
        uint32_t description_code
        uint16_t flags
        uint8_t reserved[38]
        uint64_t timestamp

    ctypedef struct tally_fx_payment_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t payer_id_lo
        uint64_t payer_id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t request_id_lo
        uint64_t request_id_hi
        uint64_t payer_amount
        uint64_t merchant_amount
        uint64_t payer_refunded
        uint64_t merchant_refunded
        uint64_t rate_ppb
        uint32_t payer_ledger
        uint32_t merchant_ledger
        uint32_t rate_version
        uint16_t refund_count
        uint8_t reserved[2]
        uint64_t timestamp

    ctypedef struct tally_fx_refund_t:
        uint64_t id_lo
        uint64_t id_hi
        uint64_t payment_id_lo
        uint64_t payment_id_hi
        uint64_t merchant_id_lo
        uint64_t merchant_id_hi
        uint64_t request_id_lo
        uint64_t request_id_hi
        uint64_t merchant_amount
        uint64_t payer_amount
        uint16_t flags
        uint8_t reserved[38]
        uint64_t timestamp

    ctypedef struct tally_wallet_tier_t:
        uint64_t account_id_lo
        uint64_t account_id_hi
        uint32_t ledger
        uint8_t tier
        uint8_t reserved_a
        uint16_t flags
        uint8_t reserved[96]
        uint64_t timestamp

    ctypedef struct tally_tier_limits_t:
        uint32_t ledger
        uint8_t tier
        uint8_t reserved_a
        uint16_t flags
        uint64_t payment_limit
        uint64_t daily_limit
        uint64_t yearly_limit
        uint64_t balance_limit
        uint8_t reserved[80]
        uint64_t timestamp

    ctypedef struct tally_wallet_limits_t:
        uint64_t account_id_lo
        uint64_t account_id_hi
        uint32_t ledger
        uint8_t tier
        uint8_t reserved_a[3]
        uint64_t payment_limit
        uint64_t daily_limit
        uint64_t yearly_limit
        uint64_t balance_limit
        uint32_t day
        uint32_t year
        uint64_t day_spent
        uint64_t year_spent
        uint64_t tier_set_at
        uint8_t reserved[32]
        uint64_t timestamp

    bint TALLY_LIKELY(bint)
    bint TALLY_UNLIKELY(bint)
    void TALLY_PREFETCH(const void *)
    void tally_touch_pages(void *data, size_t size)
    void tally_fix_mmap_threshold()
    void tally_stream_store(void *dst, const void *src, size_t size)
    void tally_store_fence()


cdef enum:
    ACCOUNT_SIZE = 128
    TRANSFER_SIZE = 128
    ACCOUNT_RESERVED_SIZE = 36
    TRANSFER_RESERVED_SIZE = 8
    ORDER_TOKEN_BYTES = 10
    OUT_TRADE_NO_BYTES = 32


# Set by the server in a product event's flags when its client's role may not name that
# merchant (engine/roles.py): the core answers ``forbidden`` for it, first of all checks.
cpdef enum event_flag_t:
    EVENT_FLAG_FORBIDDEN = 1 << 15


cpdef enum order_state_t:
    ORDER_NOTPAY = 1
    ORDER_SUCCESS = 2
    ORDER_CLOSED = 3
    ORDER_REFUND = 4
    ORDER_USERPAYING = 5        # a payment code's charge waiting for the user's confirmation


cpdef enum order_kind_t:
    ORDER_KIND_QR = 0           # created by the merchant, paid by the user (pay_orders)
    ORDER_KIND_CODE = 1         # created by charging a user's payment code (charge_codes)


cpdef enum code_state_t:
    CODE_LIVE = 1
    CODE_CHARGED = 2
    CODE_EXPIRED = 3
    CODE_REPLACED = 4


cpdef enum envelope_state_t:
    ENVELOPE_OPEN = 1
    ENVELOPE_EMPTY = 2          # every share claimed
    ENVELOPE_REFUNDED = 3       # expired: the remainder went back to the sender
    ENVELOPE_REFUND_FAILED = 4  # expired, the refund leg refused (refund_result): left in escrow


cpdef enum merchant_flag_t:
    MERCHANT_MEMBERSHIP = 1     # its payers join its membership card at their first payment
    MERCHANT_FLAGS_KNOWN = 1


cpdef enum stock_state_t:
    STOCK_ACTIVE = 1
    STOCK_ENDED = 2             # its end: the unused budget went back to the merchant


cpdef enum coupon_state_t:
    COUPON_AVAILABLE = 1
    COUPON_REDEEMED = 2


cpdef enum coupon_channel_t:
    COUPON_CHANNEL_SCAN = 1     # the user scanned the merchant's displayed code
    COUPON_CHANNEL_API = 2      # the merchant granted it
    COUPON_CHANNEL_PAY_AND_GET = 3  # awarded by a payment at the merchant's micro-POS


cpdef enum confirm_flag_t:
    CONFIRM_DECLINE = 1         # the user refuses a held charge: it is voided


cpdef enum close_reason_t:
    CLOSE_REASON_NONE = 0
    CLOSE_REASON_MERCHANT = 1
    CLOSE_REASON_EXPIRED = 2
    CLOSE_REASON_REVOKED = 3    # a held charge closed by its merchant
    CLOSE_REASON_DECLINED = 4   # a held charge declined by its user
    CLOSE_REASON_TIMEOUT = 5    # a held charge not confirmed in time


cpdef enum account_flag_t:
    ACCOUNT_LINKED = 1 << 0
    ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 1
    ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 2
    ACCOUNT_CLOSED = 1 << 3
    ACCOUNT_FLAGS_KNOWN = (1 << 4) - 1


cpdef enum transfer_flag_t:
    TRANSFER_LINKED = 1 << 0
    TRANSFER_PENDING = 1 << 1
    TRANSFER_POST_PENDING = 1 << 2
    TRANSFER_VOID_PENDING = 1 << 3
    TRANSFER_BALANCING_DEBIT = 1 << 4
    TRANSFER_BALANCING_CREDIT = 1 << 5
    TRANSFER_FLAGS_KNOWN = (1 << 6) - 1


cdef enum:
    # Transfer ids whose top 16 bits are this belong to the products' legs (core/orders.pyx
    # leg_id_of): a client's transfer may not take one (id_reserved), so no client can hold a
    # payment's leg id and make it fail, or collide with it in the cold tier.
    LEG_ID_TAG = 0xFFFE


# One result per event, checked in the documented order (docs/data-model.md).
# Mirrored by the Python IntEnum core.Result; tests/test_records.py checks they match.
cpdef enum result_t:
    R_OK = 0
    R_LINKED_EVENT_FAILED = 1
    R_LINKED_EVENT_CHAIN_OPEN = 2
    R_TIMESTAMP_MUST_BE_ZERO = 3
    R_RESERVED_FIELD = 4
    R_RESERVED_FLAG = 5
    R_ID_MUST_NOT_BE_ZERO = 6
    R_ID_MUST_NOT_BE_INT_MAX = 7
    R_FLAGS_ARE_MUTUALLY_EXCLUSIVE = 8
    R_DEBITS_PENDING_MUST_BE_ZERO = 9
    R_DEBITS_POSTED_MUST_BE_ZERO = 10
    R_CREDITS_PENDING_MUST_BE_ZERO = 11
    R_CREDITS_POSTED_MUST_BE_ZERO = 12
    R_LEDGER_MUST_NOT_BE_ZERO = 13
    R_CODE_MUST_NOT_BE_ZERO = 14
    R_EXISTS_WITH_DIFFERENT_FLAGS = 15
    R_EXISTS_WITH_DIFFERENT_USER_DATA_128 = 16
    R_EXISTS_WITH_DIFFERENT_USER_DATA_64 = 17
    R_EXISTS_WITH_DIFFERENT_USER_DATA_32 = 18
    R_EXISTS_WITH_DIFFERENT_LEDGER = 19
    R_EXISTS_WITH_DIFFERENT_CODE = 20
    R_EXISTS = 21
    R_ACCOUNTS_LIMIT_REACHED = 22
    R_DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 23
    R_DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 24
    R_CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 25
    R_CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 26
    R_ACCOUNTS_MUST_BE_DIFFERENT = 27
    R_PENDING_ID_MUST_BE_ZERO = 28
    R_PENDING_ID_MUST_NOT_BE_ZERO = 29
    R_PENDING_ID_MUST_NOT_BE_INT_MAX = 30
    R_PENDING_ID_MUST_BE_DIFFERENT = 31
    R_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = 32
    R_AMOUNT_MUST_NOT_BE_ZERO = 33
    R_DEBIT_ACCOUNT_NOT_FOUND = 34
    R_CREDIT_ACCOUNT_NOT_FOUND = 35
    R_ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = 36
    R_TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = 37
    R_PENDING_TRANSFER_NOT_FOUND = 38
    R_PENDING_TRANSFER_NOT_PENDING = 39
    R_PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = 40
    R_PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = 41
    R_PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = 42
    R_PENDING_TRANSFER_HAS_DIFFERENT_CODE = 43
    R_EXCEEDS_PENDING_TRANSFER_AMOUNT = 44
    R_PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = 45
    R_EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = 46
    R_EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = 47
    R_EXISTS_WITH_DIFFERENT_AMOUNT = 48
    R_EXISTS_WITH_DIFFERENT_PENDING_ID = 49
    R_EXISTS_WITH_DIFFERENT_TIMEOUT = 50
    R_PENDING_TRANSFER_ALREADY_POSTED = 51
    R_PENDING_TRANSFER_ALREADY_VOIDED = 52
    R_PENDING_TRANSFER_EXPIRED = 53
    R_DEBIT_ACCOUNT_CLOSED = 54
    R_CREDIT_ACCOUNT_CLOSED = 55
    R_OVERFLOWS_DEBITS_PENDING = 56
    R_OVERFLOWS_CREDITS_PENDING = 57
    R_OVERFLOWS_DEBITS_POSTED = 58
    R_OVERFLOWS_CREDITS_POSTED = 59
    R_OVERFLOWS_DEBITS = 60
    R_OVERFLOWS_CREDITS = 61
    R_OVERFLOWS_TIMEOUT = 62
    R_EXCEEDS_CREDITS = 63
    R_EXCEEDS_DEBITS = 64
    R_TRANSFERS_LIMIT_REACHED = 65
    # The orders' (docs/products.md "Orders: the reference").
    R_OUT_TRADE_NO_INVALID = 66
    R_EXPIRE_AFTER_OUT_OF_RANGE = 67
    R_MERCHANT_NOT_FOUND = 68
    R_CURRENCY_MISMATCH = 69
    R_ID_MISMATCH = 70
    R_EXISTS_WITH_DIFFERENT_FIELDS = 71
    R_ORDERS_LIMIT_REACHED = 72
    R_ORDER_NOT_FOUND = 73
    R_ORDER_TOKEN_INVALID = 74
    R_ORDER_PAID = 75
    R_ORDER_CLOSED = 76
    R_ORDER_EXPIRED = 77
    R_AMOUNT_MISMATCH = 78
    R_PAYER_NOT_FOUND = 79
    R_MERCHANT_MISMATCH = 80
    # The merchants' (docs/products.md "Merchants and fees").
    R_FEE_ACCOUNT_NOT_FOUND = 81
    R_SETTLEMENT_ACCOUNT_NOT_FOUND = 82
    R_FEE_RATE_OUT_OF_RANGE = 83
    R_MERCHANTS_LIMIT_REACHED = 84
    # The refunds' (docs/products.md "Refunds").
    R_OUT_REFUND_NO_INVALID = 85
    R_ORDER_NOT_PAID = 86
    R_REFUND_WINDOW_CLOSED = 87
    R_REFUNDS_PER_ORDER_LIMIT_REACHED = 88
    R_EXCEEDS_PAID_AMOUNT = 89
    R_REFUNDS_LIMIT_REACHED = 90
    R_ID_RESERVED = 91              # a client's transfer id in the product legs' range
    # The settlement's (docs/products.md "Settlement").
    R_MERCHANT_NOT_REGISTERED = 92  # no terms set: nothing is booked for it
    R_SETTLEMENT_WINDOW_OPEN = 93   # the window has not ended by the engine clock
    R_SETTLEMENT_WINDOW_BEHIND = 94  # a later window has ended with sales in it: settle through it
    R_FORBIDDEN = 95                # the client's role may not act for this merchant (engine/roles.py)
    # The payment codes' (docs/products.md "Payment codes (built)").
    R_CODE_INVALID = 96             # not 18 digits with a prefix 10-15
    R_CODE_NOT_FOUND = 97
    R_CODE_USED = 98                # charged already: a code is single-use
    R_CODE_EXPIRED = 99
    R_CODE_REPLACED = 100           # the wallet has a newer code
    R_CODE_COLLISION = 101          # another (wallet, request) has this code: ask with a new request id
    R_CODES_LIMIT_REACHED = 102
    R_USER_PAYING = 103             # held: the user must confirm (the charge is made, not yet paid)
    R_ORDER_NOT_USER_PAYING = 104   # not a payment code's order
    R_PAYER_MISMATCH = 105          # the wallet is not the order's payer
    R_LIMIT_OUT_OF_RANGE = 106      # set_limits: above the capacity (core/limits.pyx)
    # The red envelopes' (docs/products.md "Red envelopes").
    R_ENVELOPE_TOTAL_OUT_OF_RANGE = 107  # above the envelope_total limit
    R_ENVELOPE_COUNT_OUT_OF_RANGE = 108  # 0, above ENVELOPE_COUNT_MAX, or above the total
    R_ESCROW_INVALID = 109          # not found, another ledger, not an escrow account, or the sender
    R_ENVELOPES_LIMIT_REACHED = 110
    R_ENVELOPE_NOT_FOUND = 111
    R_ENVELOPE_EMPTY = 112          # every share is claimed
    R_ENVELOPE_EXPIRED = 113
    R_CLAIMS_LIMIT_REACHED = 114
    R_CLAIMER_NOT_FOUND = 115
    # The coupons' (docs/products.md "Coupons and the card pack").
    R_STOCK_COUNT_OUT_OF_RANGE = 116    # 0 or above STOCK_COUNT_MAX
    R_MIN_SPEND_BELOW_FACE = 117
    R_FACE_VALUE_OUT_OF_RANGE = 118     # face x count above the budget's ceiling
    R_BUDGET_ACCOUNT_INVALID = 119      # not found, another ledger, not a budget account, or the merchant
    R_STOCKS_LIMIT_REACHED = 120
    R_CHANNEL_INVALID = 121
    R_STOCK_NOT_FOUND = 122
    R_USER_NOT_FOUND = 123
    R_STOCK_ENDED = 124
    R_STOCK_EXHAUSTED = 125             # every coupon of the stock is issued
    R_PER_USER_LIMIT_REACHED = 126
    R_COUPONS_LIMIT_REACHED = 127
    R_COUPON_NOT_FOUND = 128
    R_COUPON_MISMATCH = 129             # not the payer's, or not of the named stock
    R_COUPON_REDEEMED = 130             # by another payment
    R_COUPON_EXPIRED = 131
    R_BELOW_MIN_SPEND = 132
    # The cross-border payments' (docs/products.md "Cross-border payments").
    R_RATE_INVALID = 133                # 0, above RATE_PPB_MAX, or a currency to itself
    R_POOL_INVALID = 134                # not found, another ledger, not an FX pool, or not the pair's
    R_RATES_LIMIT_REACHED = 135
    R_RATE_NOT_FOUND = 136
    R_RATE_CHANGED = 137                # not the rate quoted: quote again
    R_FX_PAYMENTS_LIMIT_REACHED = 138
    R_FX_PAYMENT_NOT_FOUND = 139
    R_PRODUCT_ACCOUNT = 140             # a product's own account (escrow, FX pool, coupon budget) may not pay or be paid here
    # The wallet tiers' (docs/products.md "Wallet limits and real-name tiers (built)").
    R_EXCEEDS_PAYMENT_LIMIT = 141   # one debit of a tiered wallet above its tier's per-payment limit
    R_EXCEEDS_DAILY_LIMIT = 142     # its debits of the engine day (UTC) would pass the daily limit
    R_EXCEEDS_YEARLY_LIMIT = 143    # its debits of the calendar year would pass the yearly limit
    R_EXCEEDS_BALANCE_LIMIT = 144   # a credit would take what a tiered wallet holds above its limit
    R_TIER_INVALID = 145            # set_wallet_tiers: above 3; set_tier_limits: not 1..3
    R_ACCOUNT_NOT_FOUND = 146       # set_wallet_tiers: no such account
    R_TIER_LIMITS_INVALID = 147     # set_tier_limits: per payment above daily, or daily above yearly
    R_TIER_LEDGERS_LIMIT_REACHED = 148  # set_tier_limits: TIER_LEDGERS_MAX ledgers have their own already
    R_COUNT = 149
