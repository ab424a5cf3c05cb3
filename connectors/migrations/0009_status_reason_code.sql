-- An order's reason as a code of its own (INSUFFICIENT_STOCK, UNKNOWN_PRODUCT, CUSTOMER_REQUEST,
-- DAMAGED, ...), beside `status_reason`, the text people read ("INSUFFICIENT_STOCK: prd_3002: 3
-- requested, 1 in stock"). Rows written before this migration get the code from their text.
ALTER TABLE orders ADD COLUMN status_reason_code text;
UPDATE orders SET status_reason_code = split_part(status_reason, ':', 1)
WHERE status_reason IS NOT NULL;
